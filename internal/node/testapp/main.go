// Command testapp is the client workload of the real-node test
// (internal/node): a static binary in an image of its own, since the test
// images have no shell or curl.
//
//	testapp loop URL RATE   GET URL RATE times a second until SIGTERM, each
//	                        request on a new connection; print every failure
//	                        and, every 2 s and at exit, "SUMMARY ok=N fail=M"
//	testapp n URL N         N requests one after another; exit 1 if one failed
//
// A request counts as ok when it gets 200 and a body that contains the
// marker given in the MARKER environment variable (if set).
//
// With HEALTH_ADDR set (an address, the pod's IP), it also answers its
// probes there and nowhere else, as an app bound to its pod IP: GET
// /healthz with 200 on port 8081 (any connection there for a tcpSocket
// probe) and the gRPC health service, SERVING, on port 8082.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: testapp loop URL RATE | n URL N")
		os.Exit(2)
	}
	num, err := strconv.Atoi(os.Args[3])
	if err != nil || num <= 0 {
		fmt.Fprintln(os.Stderr, "testapp: RATE and N are positive numbers")
		os.Exit(2)
	}
	if addr := os.Getenv("HEALTH_ADDR"); addr != "" {
		if err := serveHealth(addr); err != nil {
			fmt.Fprintln(os.Stderr, "testapp:", err)
			os.Exit(1)
		}
	}
	c := &client{url: os.Args[2], marker: os.Getenv("MARKER"), http: &http.Client{Timeout: 5 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true}}}
	switch os.Args[1] {
	case "loop":
		c.loop(num)
	case "n":
		for i := 0; i < num; i++ {
			c.get()
		}
		c.summary()
		if c.fail.Load() > 0 {
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "testapp: unknown mode", os.Args[1])
		os.Exit(2)
	}
}

type client struct {
	url, marker string
	http        *http.Client
	ok, fail    atomic.Int64
}

// loop sends rate requests a second, each in its own goroutine so a slow
// one does not hold back the rest, until SIGTERM.
func (c *client) loop(rate int) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	report := time.NewTicker(2 * time.Second)
	defer report.Stop()
	var inflight atomic.Int64
	for {
		select {
		case <-ctx.Done():
			for inflight.Load() > 0 {
				time.Sleep(10 * time.Millisecond)
			}
			c.summary()
			return
		case <-report.C:
			c.summary()
		case <-tick.C:
			inflight.Add(1)
			go func() {
				defer inflight.Add(-1)
				c.get()
			}()
		}
	}
}

func (c *client) get() {
	start := time.Now()
	resp, err := c.http.Get(c.url)
	if err != nil {
		c.failed(start, err.Error())
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		c.failed(start, "body: "+err.Error())
	case resp.StatusCode != http.StatusOK:
		c.failed(start, fmt.Sprintf("status %d %q", resp.StatusCode, firstLine(body)))
	case c.marker != "" && !strings.Contains(string(body), c.marker):
		c.failed(start, "page without the marker")
	default:
		c.ok.Add(1)
	}
}

func (c *client) failed(start time.Time, why string) {
	c.fail.Add(1)
	fmt.Printf("FAIL %s after %s: %s\n", start.UTC().Format(time.RFC3339Nano), time.Since(start).Round(time.Millisecond), why)
}

func (c *client) summary() {
	fmt.Printf("SUMMARY ok=%d fail=%d\n", c.ok.Load(), c.fail.Load())
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}

// serveHealth answers the pod's probes on addr only: HTTP on 8081, gRPC
// health on 8082.
func serveHealth(addr string) error {
	h, err := net.Listen("tcp", net.JoinHostPort(addr, "8081"))
	if err != nil {
		return err
	}
	g, err := net.Listen("tcp", net.JoinHostPort(addr, "8082"))
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	go func() { _ = http.Serve(h, mux) }()
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer()) // "" SERVING
	go func() { _ = srv.Serve(g) }()
	fmt.Println("probes answered on", h.Addr(), "and", g.Addr())
	return nil
}

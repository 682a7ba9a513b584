package xds_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/xds"
)

// relay forwards TCP connections to meshd and can go silent on the ones
// open (a partition, meshd's node gone): they stay open, nothing passes.
type relay struct {
	addr string
	mu   sync.Mutex
	cut  []chan struct{} // closed to silence a connection
	n    int             // connections accepted
}

func startRelay(t *testing.T, to string) *relay {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns sync.WaitGroup
	t.Cleanup(func() { close(done); lis.Close(); conns.Wait() })
	r := &relay{addr: lis.Addr().String()}
	go func() {
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", to)
			if err != nil {
				in.Close()
				continue
			}
			cut := make(chan struct{})
			r.mu.Lock()
			r.n++
			r.cut = append(r.cut, cut)
			r.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				defer conns.Done()
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					select {
					case <-cut:
						<-done // silent until the test ends
						return
					default:
					}
					if n > 0 {
						if _, werr := dst.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}
			conns.Add(2)
			go pipe(out, in)
			go pipe(in, out)
			go func() { <-done; in.Close(); out.Close() }()
		}
	}()
	return r
}

// silence stops passing anything on the connections open now.
func (r *relay) silence() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.cut {
		close(c)
	}
	r.cut = nil
}

func (r *relay) accepted() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// TestEnvoyLeavesSilentMeshd: a real Envoy whose connection to meshd goes
// silent (meshd's node gone: no reset, no answer) notices by its pings
// (bootstrap's XDSKeepalive) and connects again, and gets its config over
// the new connection. Without the pings it would wait on the dead
// connection for good: Envoy sends nothing on a quiet stream.
func TestEnvoyLeavesSilentMeshd(t *testing.T) {
	pki, addr, _ := serveMeshd(t, func(c *xds.Config) { c.Limits.MinPingInterval = 100 * time.Millisecond })
	r := startRelay(t, addr)
	envoy := startSidecar(t, pki, r.addr, bootstrap.Delta, func(c *bootstrap.Config) { c.XDSKeepalive = time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	connected := func() error {
		if v, err := envoy.Stat(ctx, "control_plane.connected_state"); err != nil || v != 1 {
			return fmt.Errorf("control_plane.connected_state = %d (%v)", v, err)
		}
		return nil
	}
	eventually(t, "Envoy connected through the relay", connected)
	// Pings meshd allows (MinPingInterval) keep the connection: grpc-go
	// closes one at its fourth ping when the last three came too soon
	// (~4-5 s here with the default limit).
	time.Sleep(7 * time.Second)
	if n := r.accepted(); n != 1 {
		t.Fatalf("%d connections through the relay after six pings, want 1", n)
	}
	cds := func() int64 { v, _ := envoy.Stat(ctx, "cluster_manager.cds.update_success"); return v }
	before, updates := r.accepted(), cds()
	r.silence()
	silenced := time.Now()
	eventually(t, "Envoy connected again", func() error {
		if n := r.accepted(); n <= before {
			return fmt.Errorf("%d connection(s) through the relay", n)
		}
		return connected()
	})
	t.Logf("connected again %s after the silence", time.Since(silenced).Round(time.Millisecond))
	// Its config came over the new connection: a cluster update of the
	// fresh stream.
	eventually(t, "Envoy's config over the new connection", func() error {
		if v := cds(); v <= updates {
			return fmt.Errorf("cluster_manager.cds.update_success = %d, as before the silence", v)
		}
		return nil
	})
}

// TestEnvoyPingingTooOftenIsCut: with meshd's default ping limit (one per
// 10s), an Envoy pinging every second has its connections closed
// (grpc-go's too_many_pings) and connects again and again.
func TestEnvoyPingingTooOftenIsCut(t *testing.T) {
	pki, addr, _ := serveMeshd(t)
	r := startRelay(t, addr)
	startSidecar(t, pki, r.addr, bootstrap.Delta, func(c *bootstrap.Config) { c.XDSKeepalive = time.Second })
	eventually(t, "a connection closed for its pings", func() error {
		if n := r.accepted(); n < 2 {
			return fmt.Errorf("%d connection(s) through the relay", n)
		}
		return nil
	})
}

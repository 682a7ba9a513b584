package xds_test

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/model"
)

// TestManyConnectionsToOneService: a real sidecar carries more concurrent
// connections to one service than Envoy's default circuit breakers allow
// (1,024 per cluster): 1,100 connections held open at once all reach the
// app, as they would without the mesh.
func TestManyConnectionsToOneService(t *testing.T) {
	pki, addr, m := serveMeshd(t)
	startSidecar(t, pki, addr, bootstrap.Delta)

	// The app: answers each connection's line and holds it open.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
			go func() {
				if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
					_, _ = c.Write([]byte("ok\n"))
				}
			}()
		}
	}()
	svc := &model.Service{Namespace: "demo", Name: "web", ClusterIP: "198.19.0.10",
		Ports:     []model.Port{{Name: "tcp", Port: 80, Protocol: model.ProtocolTCP}},
		Endpoints: []model.Endpoint{{PortName: "tcp", Address: "127.0.0.1", Port: uint32(lis.Addr().(*net.TCPAddr).Port), Ready: true}}}
	lport := freePort(t)
	if err := setShared(context.Background(), m.pub, outboundOf(t, svc, lport)); err != nil {
		t.Fatal(err)
	}
	dial := func() (net.Conn, error) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", lport), 2*time.Second)
		if err != nil {
			return nil, err
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("hi\n")); err != nil {
			c.Close()
			return nil, err
		}
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "ok\n" {
			c.Close()
			return nil, fmt.Errorf("answer %q, %v", line, err)
		}
		return c, nil
	}
	eventually(t, "the service reachable through the sidecar", func() error {
		c, err := dial()
		if err == nil {
			c.Close()
		}
		return err
	})
	const n = 1100
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	failed := 0
	var first error
	for range n {
		c, err := dial()
		if err != nil {
			failed++
			first = cmp.Or(first, err)
			continue
		}
		open = append(open, c)
	}
	if failed > 0 {
		t.Errorf("%d of %d concurrent connections to one service failed (first: %v); want all through", failed, n, first)
	}
}

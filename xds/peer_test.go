//go:build linux

package xds_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/xds"
	"github.com/meshd/meshd/xds/resource"
)

// gatedConn is a client's TCP connection with a small receive buffer
// whose reads can be held (a stuck sidecar) or paced (a slow one).
type gatedConn struct {
	net.Conn
	mu    sync.Mutex
	held  chan struct{} // closed while reads flow
	pace  time.Duration // pause before each read
	chunk int           // most bytes per read while paced
}

func dialGated(ctx context.Context, addr string) (*gatedConn, error) {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	open := make(chan struct{})
	close(open)
	return &gatedConn{Conn: c, held: open}, nil
}

func (c *gatedConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	held, pace, chunk := c.held, c.pace, c.chunk
	c.mu.Unlock()
	<-held
	if pace > 0 {
		time.Sleep(pace)
		p = p[:min(len(p), chunk)]
	}
	return c.Conn.Read(p)
}

func (c *gatedConn) hold() {
	c.mu.Lock()
	c.held = make(chan struct{})
	c.mu.Unlock()
}

func (c *gatedConn) release() {
	c.mu.Lock()
	close(c.held)
	c.mu.Unlock()
}

func (c *gatedConn) paced(every time.Duration, chunk int) {
	c.mu.Lock()
	c.pace, c.chunk = every, chunk
	c.mu.Unlock()
}

// bulkyClusters are n clusters of ~1 KB each.
func bulkyClusters(n int) resource.Resources {
	pad, _ := structpb.NewStruct(map[string]any{"pad": strings.Repeat("x", 1000)})
	var out []types.Resource
	for i := range n {
		out = append(out, &clusterv3.Cluster{Name: fmt.Sprintf("bulky-%d", i),
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			Metadata:             &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"test": pad}}})
	}
	return resource.Resources{resourcev3.ClusterType: out}
}

// peerStream opens an ADS stream over a gatedConn, with Envoy's large
// flow-control windows (meshd is not held back by HTTP/2), and waits for
// its secrets. Not through dialADS: its 20s deadline would end a stuck
// stream by itself, and TestStuckPeerIsClosed could no longer fail.
func peerStream(t *testing.T, pki *testPKI, addr string) (discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, *gatedConn) {
	t.Helper()
	cfg := &tls.Config{RootCAs: pki.pool(), InsecureSkipVerify: true, Certificates: []tls.Certificate{pki.tlsCert(pki.issue(webID, webNode))}}
	conns := make(chan *gatedConn, 1)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithStaticStreamWindowSize(64<<20), grpc.WithStaticConnWindowSize(64<<20),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := dialGated(ctx, addr)
			if err == nil {
				conns <- c
			}
			return c, err
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(secretsRequest(webNode)); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	return stream, <-conns
}

func clustersRequest() *discoveryv3.DiscoveryRequest {
	return &discoveryv3.DiscoveryRequest{Node: node(webNode, nil), TypeUrl: resourcev3.ClusterType}
}

// TestStuckPeerIsClosed: a sidecar that stops reading while meshd sends it
// a large response (its host gone, or Envoy stuck) loses its connection
// once its kernel has held meshd back for the peer timeout, and its stream
// is gone from meshd.
func TestStuckPeerIsClosed(t *testing.T) {
	reg := prometheus.NewRegistry()
	pki, addr, m := serveMeshd(t, func(c *xds.Config) { c.Registerer, c.Limits.PeerTimeout = reg, time.Second })
	if err := setShared(context.Background(), m.pub, bulkyClusters(4000)); err != nil {
		t.Fatal(err)
	}
	stream, conn := peerStream(t, pki, addr)
	if n := metricValue(t, reg, "meshd_xds_connected_streams", "", ""); n != 1 {
		t.Fatalf("meshd_xds_connected_streams = %v, want 1", n)
	}
	conn.hold()
	defer conn.release()
	if err := stream.Send(clustersRequest()); err != nil {
		t.Fatal(err)
	}
	// Without the kernel's watch nothing ends the stream: grpc-go's pings
	// are off, and the 4 MB response waits in meshd's writer for good.
	eventually(t, "the stuck peer's stream closed", func() error {
		if n := metricValue(t, reg, "meshd_xds_connected_streams", "", ""); n != 0 {
			return fmt.Errorf("meshd_xds_connected_streams = %v", n)
		}
		return nil
	})
}

// TestSlowPeerIsKept: a sidecar reading a large response far more slowly
// than meshd writes it, and sending nothing meanwhile for many times the
// peer timeout, keeps its stream and gets the whole response: its kernel
// acknowledges what it reads.
func TestSlowPeerIsKept(t *testing.T) {
	reg := prometheus.NewRegistry()
	pki, addr, m := serveMeshd(t, func(c *xds.Config) { c.Registerer, c.Limits.PeerTimeout = reg, 500*time.Millisecond })
	const clusters = 2000
	if err := setShared(context.Background(), m.pub, bulkyClusters(clusters)); err != nil {
		t.Fatal(err)
	}
	stream, conn := peerStream(t, pki, addr)
	conn.paced(10*time.Millisecond, 4<<10) // ~400 KB/s: ~5 s for ~2 MB
	start := time.Now()
	if err := stream.Send(clustersRequest()); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("the slow peer's response: %v", err)
	}
	took := time.Since(start)
	if len(resp.GetResources()) != clusters {
		t.Fatalf("%d clusters, want %d", len(resp.GetResources()), clusters)
	}
	if took < 4*500*time.Millisecond {
		t.Fatalf("the response took %s: not slow enough to test anything", took)
	}
	if n := metricValue(t, reg, "meshd_xds_connected_streams", "", ""); n != 1 {
		t.Errorf("meshd_xds_connected_streams = %v after %s of slow reading, want 1", n, took)
	}
	t.Logf("read in %s with a peer timeout of 500ms", took)
}

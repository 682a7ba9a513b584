package xds_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// TestNoPingPerRequest: meshd answers a proxy's requests without pinging it.
// grpc-go's dynamic flow-control windows send a ping after the first data
// of each quiet spell (nearly every ACK of a proxy): with a thousand
// proxies, a thousand more frames to write and answers to read per change.
// The test reads the HTTP/2 frames meshd sends, under TLS, while a proxy
// sends requests spaced as a change's ACKs are.
func TestNoPingPerRequest(t *testing.T) {
	pki := newTestPKI(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m := startMeshd(t, pki, addr)
	t.Cleanup(func() { m.stop(t) })

	var pings, frames atomic.Int64
	parsed := make(chan error, 1)
	tap := func(c net.Conn) net.Conn {
		r, w := io.Pipe()
		go func() {
			f := http2.NewFramer(nil, r)
			for {
				fr, err := f.ReadFrame()
				if err != nil {
					r.CloseWithError(err) // the tap's writes fail, not block
					parsed <- err
					return
				}
				frames.Add(1)
				if p, ok := fr.(*http2.PingFrame); ok && !p.IsAck() {
					pings.Add(1)
				}
			}
		}()
		return &tappedConn{Conn: c, w: w}
	}
	cfg := &tls.Config{RootCAs: pki.pool(), MinVersion: tls.VersionTLS12, InsecureSkipVerify: true,
		Certificates: []tls.Certificate{pki.tlsCert(pki.issue(webID, webNode))}}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(tappedCreds{credentials.NewTLS(cfg), tap}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	req := secretsRequest(webNode)
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	const requests = 20
	for range requests {
		// An ACK, after a pause longer than a ping's round trip here.
		time.Sleep(20 * time.Millisecond)
		req.VersionInfo, req.ResponseNonce = resp.GetVersionInfo(), resp.GetNonce()
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	conn.Close()
	if err := <-parsed; err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("reading meshd's frames: %v", err)
	}
	if frames.Load() < 3 {
		t.Fatalf("read %d frames from meshd; want its settings, headers and response at least", frames.Load())
	}
	if n := pings.Load(); n != 0 {
		t.Errorf("meshd sent %d pings over %d requests; want none", n, requests+1)
	}
}

// tappedCreds hands the TLS connection to tap once the handshake is done.
type tappedCreds struct {
	credentials.TransportCredentials
	tap func(net.Conn) net.Conn
}

func (c tappedCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		return nil, nil, err
	}
	return c.tap(conn), info, nil
}

func (c tappedCreds) Clone() credentials.TransportCredentials {
	return tappedCreds{c.TransportCredentials.Clone(), c.tap}
}

// tappedConn copies what it reads (the server's HTTP/2 frames, decrypted)
// to w.
type tappedConn struct {
	net.Conn
	w *io.PipeWriter
}

func (c *tappedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		if _, werr := c.w.Write(p[:n]); werr != nil {
			return n, err
		}
	}
	if err != nil {
		c.w.CloseWithError(err)
	}
	return n, err
}

func (c *tappedConn) Close() error {
	c.w.Close()
	return c.Conn.Close()
}

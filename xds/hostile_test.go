package xds_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/xds"
	"github.com/meshd/meshd/xds/resource"
)

// TestChecksThatCouldBeSkipped: what a hostile client tried to get past.
//   - A client certificate of another trust domain, signed by a CA of the
//     bundle, gets no stream (PermissionDenied).
//   - DeltaSecrets with an empty type URL is checked as a secret request: a
//     name other than default/ROOTCA is PermissionDenied.
//   - A delta stream whose first request carries no node is InvalidArgument
//     (it used to be accepted and never answered).
func TestChecksThatCouldBeSkipped(t *testing.T) {
	pki, addr, _ := serveMeshd(t, func(c *xds.Config) { c.TrustDomain = "cluster.local" })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	foreign := pki.issue(ca.Identity{TrustDomain: "evil.example", Namespace: "demo", ServiceAccount: "web"}, webNode)
	stream, done := adsClient(t, pki, addr, foreign)
	defer done()
	_ = stream.Send(secretsRequest(webNode))
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("certificate of trust domain evil.example: %v; want PermissionDenied", err)
	}

	sds, err := secretv3.NewSecretDiscoveryServiceClient(dialConn(t, pki, addr, pki.issue(webID, webNode))).DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = sds.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node(webNode, nil), ResourceNamesSubscribe: []string{"db-0.demo"}})
	if _, err := sds.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("DeltaSecrets with an empty type URL for another secret: %v; want PermissionDenied", err)
	}

	delta, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dialConn(t, pki, addr, pki.issue(webID, webNode))).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = delta.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType})
	if _, err := delta.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("delta stream whose first request has no node: %v; want InvalidArgument", err)
	}
}

// metricValue returns a metric's value (counter or gauge) with the given
// label, or -1 if there is none.
func metricValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				match = match || l.GetName() == label && l.GetValue() == value
			}
			if match {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// TestBoundedCostOfClientValues: a NACK's type URL becomes the metric label
// "other" unless meshd serves that type, and its error text is kept
// truncated; a stream that never binds to a pod leaves the connected gauge
// as it found it; a connection that never finishes its handshake is closed.
func TestBoundedCostOfClientValues(t *testing.T) {
	reg := prometheus.NewRegistry()
	pki, addr, m := serveMeshd(t, func(c *xds.Config) { c.Registerer, c.Limits.HandshakeTimeout = reg, 500*time.Millisecond })
	stream, done := adsClient(t, pki, addr, pki.issue(webID, webNode))
	if err := stream.Send(secretsRequest(webNode)); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	huge := strings.Repeat("x", 1<<20)
	_ = stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.SecretType, ResponseNonce: resp.Nonce,
		ResourceNames: []string{"default", "ROOTCA"}, ErrorDetail: &rpcstatus.Status{Message: huge}})
	eventually(t, "the NACK counted", func() error {
		if n := metricValue(t, reg, "meshd_xds_nacks_total", "type", "Secret"); n != 1 {
			return fmt.Errorf("nacks{type=Secret} = %v", n)
		}
		return nil
	})
	for _, p := range m.srv.Proxies() {
		for typ, st := range p.Types {
			if st.LastNACK != nil && len(st.LastNACK.Error) > 2048 {
				t.Errorf("%s: NACK text of %d bytes kept", typ, len(st.LastNACK.Error))
			}
		}
	}
	done()

	// A proxy-ID certificate whose proxy is no pod's: refused, and the
	// gauge is back where it was.
	eventually(t, "the web stream closed", func() error {
		if n := metricValue(t, reg, "meshd_xds_connected_streams", "", ""); n != 0 {
			return fmt.Errorf("connected streams %v", n)
		}
		return nil
	})
	orphan, done2 := adsClient(t, pki, addr, pki.issue(webID, "proxy:0123456789abcdef0123456789abcdef"))
	_ = orphan.Send(secretsRequest(webNode))
	_, _ = orphan.Recv()
	done2()
	eventually(t, "the unbound stream uncounted", func() error {
		if n := metricValue(t, reg, "meshd_xds_connected_streams", "", ""); n != 0 {
			return fmt.Errorf("connected streams %v after an unbound stream closed", n)
		}
		return nil
	})

	// A TCP connection that says nothing is closed after the handshake timeout.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a silent connection still open after %s (read: %v)", time.Since(start).Round(time.Millisecond), err)
	}
}

// TestUnservedTypeRefused: a request for a type meshd does not serve, SotW
// or delta, first or later on a stream, NACK or not, ends the stream with
// InvalidArgument naming the type (nothing would answer it, and each type
// asked for is state kept for the stream's life: a client inventing type
// URLs could grow it without bound); no NACK of it is counted; the served
// types still are.
func TestUnservedTypeRefused(t *testing.T) {
	// What makes ordered ADS safe (see xds.Server.Start): go-control-plane
	// queues a SotW stream's responses in one channel of this capacity.
	if resource.NumTypes > int(types.UnknownType) {
		t.Fatalf("meshd serves %d types, go-control-plane queues %d responses a stream", resource.NumTypes, types.UnknownType)
	}
	reg := prometheus.NewRegistry()
	pki, addr, _ := serveMeshd(t, func(c *xds.Config) { c.Registerer = reg })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const ecds = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
	refused := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), ecds) {
			t.Errorf("%s: %v; want InvalidArgument naming %s", what, err, ecds)
		}
	}

	sotw, done := adsClient(t, pki, addr, pki.issue(webID, webNode))
	defer done()
	_ = sotw.Send(&discoveryv3.DiscoveryRequest{Node: node(webNode, nil), TypeUrl: ecds, ResourceNames: []string{"x"}})
	_, err := sotw.Recv()
	refused("SotW, first request", err)

	served, done2 := adsClient(t, pki, addr, pki.issue(webID, webNode))
	defer done2()
	if err := served.Send(secretsRequest(webNode)); err != nil {
		t.Fatal(err)
	}
	resp, err := served.Recv()
	if err != nil {
		t.Fatal(err)
	}
	_ = served.Send(&discoveryv3.DiscoveryRequest{TypeUrl: ecds, ResponseNonce: resp.Nonce, ErrorDetail: &rpcstatus.Status{Message: "nack"}})
	for err == nil {
		_, err = served.Recv() // the SotW stream may get its secrets' ACK answered first
	}
	refused("SotW, a NACK after a served type", err)

	delta, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dialConn(t, pki, addr, pki.issue(webID, webNode))).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node(webNode, nil), TypeUrl: resourcev3.ClusterType})
	if _, err := delta.Recv(); err != nil {
		t.Fatal(err)
	}
	_ = delta.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: ecds, ResourceNamesSubscribe: []string{"x"}})
	for err == nil {
		_, err = delta.Recv()
	}
	refused("delta, after a served type", err)
	if n := metricValue(t, reg, "meshd_xds_nacks_total", "type", "other"); n > 0 {
		t.Errorf("nacks{type=other} = %v: the refused NACK was counted", n)
	}
}

// TestConnectionsPerIdentity: one identity may hold a bounded number of
// connections, idle or not (the next is closed after its handshake and
// counted); another identity still connects; a closed connection frees
// its place.
func TestConnectionsPerIdentity(t *testing.T) {
	reg := prometheus.NewRegistry()
	pki, addr, _ := serveMeshd(t, func(c *xds.Config) { c.Registerer, c.Limits.ConnectionsPerIdentity = reg, 3 })
	dial := func(cert *ca.Certificate) (*tls.Conn, bool) {
		t.Helper()
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pki.pool(), InsecureSkipVerify: true, NextProtos: []string{"h2"},
			Certificates: []tls.Certificate{pki.tlsCert(cert)}})
		if err != nil {
			t.Fatal(err)
		}
		// An accepted connection gets the server's HTTP/2 settings and
		// stays open; a refused one is closed.
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = conn.Read(make([]byte, 64))
		_ = conn.SetReadDeadline(time.Time{})
		return conn, err == nil || errors.Is(err, os.ErrDeadlineExceeded)
	}
	web := pki.issue(webID, webNode)
	var open []*tls.Conn
	for i := range 3 {
		c, ok := dial(web)
		if !ok {
			t.Fatalf("connection %d of web-0 refused", i+1)
		}
		open = append(open, c)
	}
	if c, ok := dial(web); ok {
		c.Close()
		t.Fatal("a fourth connection of web-0 stayed open")
	}
	if c, ok := dial(pki.issue(dbID, dbNode)); !ok {
		t.Error("db-0 refused while web-0 is at its limit")
	} else {
		c.Close()
	}
	if n := limitedCount(t, reg, "connections_per_identity"); n != 1 {
		t.Errorf("meshd_xds_limited_total{limit=connections_per_identity} = %v, want 1", n)
	}
	open[0].Close()
	eventually(t, "a place freed by a closed connection", func() error {
		c, ok := dial(web)
		if !ok {
			return fmt.Errorf("still refused")
		}
		open = append(open, c)
		return nil
	})
	for _, c := range open {
		c.Close()
	}
}

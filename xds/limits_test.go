package xds_test

import (
	"errors"
	"fmt"
	"io"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/xds"
)

var (
	dbID   = ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "db"}
	dbNode = xds.NodeID("demo", "db-0")
)

func secretsRequest(nodeID string) *discoveryv3.DiscoveryRequest {
	return &discoveryv3.DiscoveryRequest{Node: node(nodeID, nil), TypeUrl: resourcev3.SecretType, ResourceNames: []string{"default", "ROOTCA"}}
}

// openServed opens an ADS stream and waits for its secrets: the stream is
// then counted by meshd.
func openServed(t *testing.T, pki *testPKI, addr string, cert *ca.Certificate, nodeID string) (discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, func(), error) {
	t.Helper()
	stream, done := adsClient(t, pki, addr, cert)
	if err := stream.Send(secretsRequest(nodeID)); err != nil {
		if errors.Is(err, io.EOF) {
			// The server ended the stream first (a refused one, before
			// the request went out): its status is what Recv returns.
			_, err = stream.Recv()
		}
		done()
		return nil, nil, err
	}
	if _, err := stream.Recv(); err != nil {
		done()
		return nil, nil, err
	}
	return stream, done, nil
}

// TestStreamsPerIdentity: one proxy identity gets at most the configured
// number of open streams (the next gets ResourceExhausted, counted in
// meshd_xds_limited_total); another proxy is served meanwhile; a closed
// stream frees its place.
func TestStreamsPerIdentity(t *testing.T) {
	pki := newTestPKI(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	reg := prometheus.NewRegistry()
	m := startMeshd(t, pki, addr, func(c *xds.Config) { c.Limits.StreamsPerIdentity, c.Registerer = 3, reg })
	t.Cleanup(func() { m.stop(t) })
	web := pki.issue(webID, webNode)
	var closers []func()
	for range 3 {
		_, done, err := openServed(t, pki, addr, web, webNode)
		if err != nil {
			t.Fatal(err)
		}
		closers = append(closers, done)
	}
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	if _, _, err := openServed(t, pki, addr, web, webNode); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a fourth stream of web-0: %v; want ResourceExhausted", err)
	}
	if _, done, err := openServed(t, pki, addr, pki.issue(dbID, dbNode), dbNode); err != nil {
		t.Fatalf("db-0 while web-0 is at its limit: %v", err)
	} else {
		done()
	}
	if n := limitedCount(t, reg, "streams_per_identity"); n != 1 {
		t.Errorf("meshd_xds_limited_total{limit=streams_per_identity} = %v, want 1", n)
	}
	closers[0]()
	closers = closers[1:]
	eventually(t, "a place freed by a closed stream", func() error {
		_, done, err := openServed(t, pki, addr, web, webNode)
		if err == nil {
			closers = append(closers, done)
		}
		return err
	})
}

// TestRequestFloodIsThrottled: a proxy flooding its stream with requests is
// read at the configured rate (the rest waits, counted in
// meshd_xds_limited_total), and another proxy is served meanwhile.
func TestRequestFloodIsThrottled(t *testing.T) {
	pki := newTestPKI(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	reg := prometheus.NewRegistry()
	m := startMeshd(t, pki, addr, func(c *xds.Config) {
		c.Limits.RequestsPerSecond, c.Limits.Burst, c.Registerer = 5, 5, reg
	})
	t.Cleanup(func() { m.stop(t) })
	flood, done, err := openServed(t, pki, addr, pki.issue(webID, webNode), webNode)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	const sent = 300
	go func() {
		for range sent {
			if flood.Send(secretsRequest(webNode)) != nil {
				return
			}
		}
	}()
	eventually(t, "the flood throttled", func() error {
		if n := limitedCount(t, reg, "request_rate"); n == 0 {
			return fmt.Errorf("no request throttled yet")
		}
		return nil
	})
	_, dbDone, err := openServed(t, pki, addr, pki.issue(dbID, dbNode), dbNode)
	if err != nil {
		t.Fatalf("db-0 during web-0's flood: %v", err)
	}
	dbDone()
	if n := limitedCount(t, reg, "request_rate"); n >= sent-5 {
		t.Errorf("%v of %d requests throttled by the time db-0 was served; want the flood still waiting", n, sent)
	}
}

// limitedCount reads meshd_xds_limited_total{limit=limit}.
func limitedCount(t *testing.T, reg *prometheus.Registry, limit string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "meshd_xds_limited_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "limit" && l.GetValue() == limit {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

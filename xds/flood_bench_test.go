package xds_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/xds"
)

// BenchmarkSubscriptionFlood: one identity opens as many delta streams as
// it may (8) and subscribes each, on 4 types, to as many names that do not
// exist as meshd allows (1,024 per type), 1 KiB each; it reports meshd's
// live heap growth (after a GC) with all of them held, then checks that one
// name more is refused. meshd runs in this process, so the heap is its own.
func BenchmarkSubscriptionFlood(b *testing.B) {
	pki := newTestPKI(b)
	types := []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.RouteType, resourcev3.ListenerType}
	for b.Loop() {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(b))
		m := startMeshd(b, pki, addr)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cert := pki.issue(webID, webNode)
		runtime.GC()
		var before, held runtime.MemStats
		runtime.ReadMemStats(&before)
		var streams []discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
		for s := range 8 {
			st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dialConn(b, pki, addr, cert)).DeltaAggregatedResources(ctx)
			if err != nil {
				b.Fatal(err)
			}
			streams = append(streams, st)
			if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node(webNode, nil), TypeUrl: resourcev3.ListenerType}); err != nil {
				b.Fatal(err)
			}
			if _, err := st.Recv(); err != nil {
				b.Fatal(err)
			}
			for _, typ := range types {
				names := make([]string, xds.MaxUnknownNames)
				for i := range names {
					names[i] = fmt.Sprintf("%d-%d-%s", s, i, strings.Repeat("x", 1000))
				}
				if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ, ResourceNamesSubscribe: names}); err != nil {
					b.Fatal(err)
				}
			}
		}
		time.Sleep(2 * time.Second) // let meshd read every request (50/s per stream)
		runtime.GC()
		runtime.ReadMemStats(&held)
		b.ReportMetric(float64(int64(held.HeapAlloc)-int64(before.HeapAlloc))/(1<<20), "heap-MiB-at-the-bound")
		b.ReportMetric(float64(len(streams)*len(types)*xds.MaxUnknownNames), "names-held")
		for s, st := range streams {
			_ = st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResourceNamesSubscribe: []string{"one-more"}})
			for {
				if _, err := st.Recv(); err != nil {
					if status.Code(err) != codes.ResourceExhausted {
						b.Fatalf("stream %d past the bound: %v; want ResourceExhausted", s, err)
					}
					break
				}
			}
		}
		cancel()
		m.stop(b)
	}
}

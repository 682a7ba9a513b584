package translate_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/model"
	"github.com/meshd/meshd/xds/translate"
)

// benchModel builds services × endpoints (one HTTP port each, pods in the
// mesh, one service account per service) and a workload per endpoint.
func benchModel(services, endpoints int) *model.Snapshot {
	snap := &model.Snapshot{TrustDomain: "cluster.local"}
	var list []*model.Service
	for i := range services {
		svc := &model.Service{Namespace: fmt.Sprintf("ns%d", i%50), Name: fmt.Sprintf("svc%d", i),
			ClusterIP: fmt.Sprintf("198.19.%d.%d", i/250, i%250+1),
			Ports:     []model.Port{{Name: "http", Port: 80, Protocol: model.ProtocolHTTP}}}
		id := model.SPIFFEID("cluster.local", svc.Namespace, svc.Name)
		for j := range endpoints {
			n := i*endpoints + j
			ip := fmt.Sprintf("198.18.%d.%d", n/250, n%250+1)
			w := &model.Workload{Namespace: svc.Namespace, Name: fmt.Sprintf("%s-%d", svc.Name, j), ServiceAccount: svc.Name,
				IP: ip, Identity: id, Meshed: true, Mode: model.ModeStrict, Ports: []model.Port{{Name: "http", Port: 8080, Protocol: model.ProtocolHTTP}}}
			snap.Workloads = append(snap.Workloads, w)
			svc.Endpoints = append(svc.Endpoints, model.Endpoint{PortName: "http", Address: ip, Port: 8080, Ready: true, Identity: id, Workload: w.Key()})
		}
		list = append(list, svc)
	}
	// Services sorted by key, as the model promises.
	slices.SortFunc(list, func(a, b *model.Service) int { return strings.Compare(a.Key(), b.Key()) })
	snap.Services = vec.Of(list)
	return snap
}

// BenchmarkShared: the shared resources of 1,000 services × 10 endpoints,
// built once per model change.
func BenchmarkShared(b *testing.B) {
	snap := benchModel(1000, 10)
	b.ReportAllocs()
	for b.Loop() {
		res, _ := translate.Shared(snap)
		if len(res) == 0 {
			b.Fatal("nothing translated")
		}
	}
}

// BenchmarkProxies: the own resources of 1,000 proxies (inbound listener
// and cluster each), as after a model change.
func BenchmarkProxies(b *testing.B) {
	snap := benchModel(1000, 10)
	ws := snap.Workloads[:1000]
	b.ReportAllocs()
	for b.Loop() {
		for _, w := range ws {
			translate.Proxy(snap, w)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*len(ws)), "µs/proxy")
}

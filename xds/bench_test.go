package xds_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
)

// BenchmarkConnectStorm connects N simulated sidecars at once, each with its
// own client certificate, over SotW ADS, and measures the time until every
// one holds its "default" and "ROOTCA" secrets. It reports seconds for all N
// and sidecars/s.
func BenchmarkConnectStorm(b *testing.B) {
	for _, n := range []int{100, 500} {
		b.Run(fmt.Sprintf("sidecars=%d", n), func(b *testing.B) {
			pki := newTestPKI(b)
			certs := make([]*ca.Certificate, n)
			for i := range certs {
				certs[i] = pki.issue(ca.Identity{TrustDomain: "cluster.local", Namespace: "bench", ServiceAccount: "sa"}, xds.NodeID("bench", fmt.Sprintf("pod-%d", i)))
			}
			var total time.Duration
			for b.Loop() {
				addr := fmt.Sprintf("127.0.0.1:%d", freePort(b))
				m := startMeshd(b, pki, addr)
				start := time.Now()
				var wg sync.WaitGroup
				errs := make(chan error, n)
				for i := range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						errs <- fetchSecrets(b, pki, addr, certs[i])
					}()
				}
				wg.Wait()
				total += time.Since(start)
				close(errs)
				for err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
				m.stop(b)
			}
			per := total.Seconds() / float64(b.N)
			b.ReportMetric(per, "s/all-have-secrets")
			b.ReportMetric(float64(n)/per, "sidecars/s")
		})
	}
}

func fetchSecrets(b *testing.B, pki *testPKI, addr string, cert *ca.Certificate) error {
	stream, done, err := dialADS(b, pki, addr, cert)
	if err != nil {
		return err
	}
	defer done()
	err = stream.Send(&discoveryv3.DiscoveryRequest{Node: node(cert.Leaf.Subject.CommonName, nil), TypeUrl: resourcev3.SecretType,
		ResourceNames: []string{sds.NameDefault, sds.NameRootCA}})
	if err != nil {
		return err
	}
	resp, err := stream.Recv()
	if err != nil {
		return err
	}
	if len(resp.Resources) != 2 {
		return fmt.Errorf("got %d secrets, want 2", len(resp.Resources))
	}
	return nil
}

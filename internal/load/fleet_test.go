package load_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/load"
	"github.com/meshd/meshd/internal/testenv"
)

// TestFleet runs the load tool against a real meshd, a few sidecars of
// each API, unscoped and scoped: every sidecar gets its full
// configuration (its clusters' endpoint sets, its listeners' route
// configurations, both secrets), holds the clusters its scope gives it,
// and sees each endpoint change in its scope; no stream drops. The
// figures BenchmarkLoad prints rest on this.
func TestFleet(t *testing.T) {
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := startMeshd(ctx, t, env, "")
	const sidecars, services = 4, 6
	for _, tc := range []struct {
		name  string
		scope int
	}{{"unscoped", 0}, {"scoped", 2}} {
		ns := fmt.Sprintf("fleet-%s-%d", tc.name, time.Now().UnixNano()%100000)
		w := &load.Workload{Client: env.Client, Namespace: ns, Services: services, Endpoints: 2, Sidecars: sidecars, Scope: tc.scope}
		if err := w.Create(ctx); err != nil {
			t.Fatal(err)
		}
		for _, delta := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/delta=%t", tc.name, delta), func(t *testing.T) {
				fleet, err := load.Connect(ctx, load.Config{XDSAddr: m.xdsAddr, Issuer: m.issuer, Bundle: m.bundle, TrustDomain: "cluster.local",
					Namespace: ns, Sidecars: sidecars, Delta: delta, ScopeOf: w.ScopeOf})
				if err != nil {
					t.Fatalf("%v\nmeshd log: %s", err, tail(m.log))
				}
				defer fleet.Close()
				if fleet.ConfigBytes <= 0 {
					t.Errorf("ConfigBytes %d", fleet.ConfigBytes)
				}
				// A sidecar that connected before meshd saw its pod's
				// scope holds every cluster until meshd narrows it: the
				// clusters it holds are checked until they are right.
				var wrong []string
				for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
					wrong = nil
					for i, n := range fleet.Clusters() {
						// Unscoped, every service of the cluster (this
						// namespace's and any other's).
						if tc.scope == 0 && n < services || tc.scope > 0 && n != tc.scope {
							wrong = append(wrong, fmt.Sprintf("sidecar %d holds %d", i, n))
						}
					}
					if len(wrong) == 0 || time.Now().After(deadline) {
						break
					}
				}
				if len(wrong) > 0 {
					t.Errorf("clusters held (scope %d, %d services): %v", tc.scope, services, wrong)
				}
				for range 3 {
					var cluster string
					lat, err := fleet.Convergence(ctx, func() (string, string, error) {
						c, addr, err := w.AddEndpoint(ctx)
						cluster = c
						return c, addr, err
					})
					if err != nil {
						t.Fatalf("%v\nmeshd log: %s", err, tail(m.log))
					}
					want := 0
					for i := range sidecars {
						scope := w.ScopeOf(i)
						for _, svc := range scope {
							if cluster == "outbound|80|"+svc+"."+ns {
								want++
							}
						}
						if scope == nil {
							want++
						}
					}
					if len(lat) != want {
						t.Errorf("change of %s: %d sidecars saw it, want %d", cluster, len(lat), want)
					}
				}
				if n := fleet.Dropped(); n != 0 {
					t.Errorf("%d streams dropped: %v", n, fleet.DropReasons())
				}
			})
		}
	}
}

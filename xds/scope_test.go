package xds_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/xds"
)

// scopeYAML: three services in demo, each with one endpoint; web-0 (the
// sidecar under test) is in demo, whose namespace annotation is %[1]s; %[2]s
// is web-0's annotations.
var scopeYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {meshd.io/inject: enabled}, annotations: {%[1]s}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo, annotations: {%[2]s}}
spec: {serviceAccountName: web}
status: {podIP: 198.18.0.10}
` + scopeService + scopeService2 + scopeService3

const scopeService = `---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.0.10]}]
`

var (
	scopeService2 = strings.NewReplacer("web", "db", "198.19.0.10", "198.19.0.11", "198.18.0.10", "198.18.0.11").Replace(scopeService)
	scopeService3 = strings.NewReplacer("web", "cache", "198.19.0.10", "198.19.0.12", "198.18.0.10", "198.18.0.12").Replace(scopeService)
)

// TestEgressScopeWithEnvoy: a namespace's meshd.io/egress annotation scopes
// its sidecars' outbound configuration: the real Envoy of web-0 holds the
// clusters of the services in scope only (db), the pod's own annotation
// overrides its namespace's ("*/*": every service), and a scope that does
// not parse is reported and not applied. Over delta and SotW.
func TestEgressScopeWithEnvoy(t *testing.T) {
	for _, api := range []bootstrap.APIType{bootstrap.Delta, bootstrap.SotW} {
		t.Run(string(api), func(t *testing.T) {
			pki := newTestPKI(t)
			addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			m := startWithMesh(t, pki, addr)
			t.Cleanup(func() { m.stop(t) })
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			update := func(nsAnnotations, podAnnotations string, wantProblems int) {
				t.Helper()
				st, err := k8s.StateFromYAML(fmt.Appendf(nil, scopeYAML, nsAnnotations, podAnnotations))
				if err != nil {
					t.Fatal(err)
				}
				snap, problems := k8s.Convert(st, "cluster.local")
				if len(problems) != wantProblems {
					t.Fatalf("%d problems %v, want %d", len(problems), problems, wantProblems)
				}
				if _, err := m.mesh.Update(ctx, snap); err != nil {
					t.Fatal(err)
				}
			}
			update(`meshd.io/egress: "./db"`, "", 0)
			envoy := startSidecar(t, pki, addr, api)
			clusters := func(want ...string) {
				t.Helper()
				eventually(t, fmt.Sprintf("Envoy's outbound clusters %v", want), func() error {
					out, err := envoy.Admin(ctx, "/clusters")
					if err != nil {
						return err
					}
					var got []string
					for _, svc := range []string{"web", "db", "cache"} {
						if strings.Contains(string(out), "outbound|80|"+svc+".demo::") {
							got = append(got, svc)
						}
					}
					if fmt.Sprint(got) != fmt.Sprint(want) {
						return fmt.Errorf("Envoy holds %v", got)
					}
					return nil
				})
			}
			clusters("db")
			// explain says so, from the same model: db through its chain, web
			// outside the scope (passthrough, no mutual TLS).
			for svc, outside := range map[string]bool{"db.demo": false, "web.demo": true} {
				e, err := xds.Explain(m.mesh.Snapshot(), m.srv.Proxies(), webNode, svc)
				if err != nil {
					t.Fatal(err)
				}
				want := "outbound|80|" + svc
				if outside {
					want = "PassthroughCluster"
				}
				if fmt.Sprint(e.From.Egress) != "[demo/db]" || len(e.Ports) != 1 || e.Ports[0].OutsideScope != outside || e.Ports[0].Cluster != want {
					t.Errorf("explain %s -> %s: egress %v, ports %+v; want outside scope %v, cluster %s", webNode, svc, e.From.Egress, e.Ports, outside, want)
				}
			}
			update(`meshd.io/egress: "./db"`, `meshd.io/egress: "*/*"`, 0)
			clusters("web", "db", "cache")
			update(`meshd.io/egress: "./db,./cache"`, "", 0)
			clusters("db", "cache")
			update(`meshd.io/egress: "./db"`, `meshd.io/egress: "no slash"`, 1)
			clusters("web", "db", "cache")
		})
	}
}

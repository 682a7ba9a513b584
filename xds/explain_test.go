package xds_test

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/xds"
)

const explainYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {meshd.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
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
endpoints:
- addresses: [198.18.0.10]
  targetRef: {kind: Pod, namespace: demo, name: web-0}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo}
spec: {serviceAccountName: web}
status: {podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: demo}
spec: {serviceAccountName: client}
status: {podIP: 198.18.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: old-0, namespace: legacy}
status: {podIP: 198.18.0.12}
---
apiVersion: v1
kind: Service
metadata: {name: old, namespace: legacy}
spec: {clusterIP: 198.19.0.12, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: old-1, namespace: legacy, labels: {kubernetes.io/service-name: old}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints:
- addresses: [198.18.0.12]
  targetRef: {kind: Pod, namespace: legacy, name: old-0}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: demo}
spec: {clusterIP: 198.19.0.13, ports: [{name: tcp, port: 9000}]}
`

// TestExplain: the verdict and findings for the usual cases.
func TestExplain(t *testing.T) {
	st, err := k8s.StateFromYAML([]byte(explainYAML))
	if err != nil {
		t.Fatal(err)
	}
	snap, _ := k8s.Convert(st, "cluster.local")
	both := []xds.ProxyStatus{{NodeID: "web-0.demo"}, {NodeID: "client-0.demo"}}
	cases := map[string]struct {
		from, to    string
		proxies     []xds.ProxyStatus
		verdict     string
		findingLike string
	}{
		"both sidecars connected":   {"client-0.demo", "web.demo", both, "mtls", ""},
		"to a pod":                  {"client-0.demo", "web-0.demo", both, "mixed", "pass through the client's sidecar without mutual TLS"},
		"client sidecar missing":    {"client-0.demo", "web.demo", both[:1], "plaintext", "STRICT and the client sends plaintext"},
		"server sidecar missing":    {"client-0.demo", "web.demo", both[1:], "mtls", "none is connected"},
		"server outside the mesh":   {"client-0.demo", "old.legacy", both, "plaintext", "has no sidecar"},
		"service without endpoints": {"client-0.demo", "empty.demo", both, "broken", "no ready endpoint"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			e, err := xds.Explain(snap, c.proxies, c.from, c.to)
			if err != nil {
				t.Fatal(err)
			}
			if e.Verdict != c.verdict {
				t.Errorf("verdict %s, want %s (findings %v)", e.Verdict, c.verdict, e.Finds)
			}
			if c.findingLike == "" && len(e.Finds) > 0 {
				t.Errorf("findings %v, want none", e.Finds)
			}
			if c.findingLike != "" && !slices.ContainsFunc(e.Finds, func(f string) bool { return strings.Contains(f, c.findingLike) }) {
				t.Errorf("findings %v, want one containing %q", e.Finds, c.findingLike)
			}
			if (c.verdict == "mtls" || c.to == "web-0.demo") && (len(e.Ports) != 1 || !slices.Equal(e.Ports[0].ExpectedSANs, []string{"spiffe://cluster.local/ns/demo/sa/web"})) {
				t.Errorf("ports %+v: want one port expecting the web identity", e.Ports)
			}
		})
	}
	// A pod's own address: through the service mTLS (above), but a call to
	// 198.18.0.10 passes through in plaintext and the STRICT server
	// refuses it.
	e, err := xds.Explain(snap, both, "client-0.demo", "web-0.demo")
	if err != nil || len(e.PodIP) != 1 || e.PodIP[0].Address != "198.18.0.10" || e.PodIP[0].MTLS || e.PodIP[0].Path != "passthrough" ||
		!strings.HasPrefix(e.PodIP[0].Outcome, "refused") {
		t.Errorf("pod-IP path %+v (%v), want passthrough refused by the STRICT server", e.PodIP, err)
	}
	// A client without a sidecar has no listener or secrets; a server
	// outside the mesh has no mode.
	e, err = xds.Explain(snap, both, "old-0.legacy", "web.demo")
	if err != nil || e.From.Sidecar || e.From.Mode != "" || e.Ports[0].Listener != "" || e.Ports[0].ClientSecrets != nil {
		t.Errorf("from outside the mesh: %+v %+v (%v)", e.From, e.Ports, err)
	}
	e, err = xds.Explain(snap, both, "client-0.demo", "old-0.legacy")
	if err != nil || len(e.Ports) != 1 || e.Ports[0].Endpoints[0].Server.Mode != "" || e.Ports[0].Endpoints[0].InboundChain != "" || e.Verdict != "plaintext" {
		t.Errorf("to a pod outside the mesh: %+v verdict %s (%v)", e.Ports, e.Verdict, err)
	}
	// Balancing: round robin unless the Service asks for ClientIP
	// affinity.
	if e, err := xds.Explain(snap, both, "client-0.demo", "web.demo"); err != nil || e.Ports[0].Balancing != "" {
		t.Errorf("without affinity: balancing %q (%v), want none said", e.Ports[0].Balancing, err)
	}
	for s := range st.Services.Values() {
		if s.Name == "web" {
			s.Spec.SessionAffinity = "ClientIP"
		}
	}
	sticky, _ := k8s.Convert(st, "cluster.local")
	if e, err := xds.Explain(sticky, both, "client-0.demo", "web.demo"); err != nil || e.Ports[0].Balancing != "client-ip-affinity" {
		t.Errorf("with sessionAffinity ClientIP: balancing %q (%v), want client-ip-affinity", e.Ports[0].Balancing, err)
	}
	// internalTrafficPolicy Local: only the endpoints on the client's
	// node; none there, and the calls fail.
	local := corev1.ServiceInternalTrafficPolicyLocal
	for s := range st.Services.Values() {
		if s.Name == "web" {
			s.Spec.InternalTrafficPolicy = &local
		}
	}
	for sl := range st.Slices.Values() {
		if sl.Name == "web-1" {
			node := "node-a"
			sl.Endpoints[0].NodeName = &node
		}
	}
	for _, clientNode := range []string{"node-b", "node-a"} {
		for p := range st.Pods.Values() {
			if p.Name == "client-0" {
				p.Spec.NodeName = clientNode
			}
		}
		snap, _ := k8s.Convert(st, "cluster.local")
		e, err := xds.Explain(snap, both, "client-0.demo", "web.demo")
		if err != nil {
			t.Fatal(err)
		}
		if e.Ports[0].Balancing != "client-ip-affinity,node-local" {
			t.Errorf("client on %s: balancing %q, want client-ip-affinity,node-local", clientNode, e.Ports[0].Balancing)
		}
		if clientNode == "node-b" && (len(e.Ports[0].Endpoints) != 0 || e.Verdict != "broken" || !slices.ContainsFunc(e.Finds, func(f string) bool { return strings.Contains(f, "no ready endpoint on the client's node node-b") })) {
			t.Errorf("client on a node without endpoints: endpoints %+v, verdict %s, findings %q", e.Ports[0].Endpoints, e.Verdict, e.Finds)
		}
		if clientNode == "node-a" && (len(e.Ports[0].Endpoints) != 1 || e.Verdict != "mtls") {
			t.Errorf("client on the endpoint's node: endpoints %+v, verdict %s, findings %q", e.Ports[0].Endpoints, e.Verdict, e.Finds)
		}
	}
	// Zone hints (the service Cluster again): the endpoints hinted for the
	// client's zone; the client's zone not known, or none hinted for it:
	// every endpoint, and said why.
	cluster := corev1.ServiceInternalTrafficPolicyCluster
	for s := range st.Services.Values() {
		if s.Name == "web" {
			s.Spec.InternalTrafficPolicy = &cluster
		}
	}
	for sl := range st.Slices.Values() {
		if sl.Name == "web-1" {
			sl.Endpoints[0].Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-a"}}}
		}
	}
	for _, tc := range []struct{ zone, balancing, find string }{
		{"zone-a", "client-ip-affinity,zone:zone-a", ""},
		{"zone-b", "client-ip-affinity", `no ready endpoint hinted for the client's node "node-a" or zone "zone-b"`},
		{"", "client-ip-affinity", "no zone label"},
	} {
		for p := range st.Pods.Values() {
			if p.Name == "client-0" {
				p.Labels = map[string]string{corev1.LabelTopologyZone: tc.zone}
			}
		}
		snap, _ := k8s.Convert(st, "cluster.local")
		e, err := xds.Explain(snap, both, "client-0.demo", "web.demo")
		if err != nil {
			t.Fatal(err)
		}
		found := tc.find == "" && len(e.Finds) == 0 || tc.find != "" && slices.ContainsFunc(e.Finds, func(f string) bool { return strings.Contains(f, tc.find) })
		if e.Ports[0].Balancing != tc.balancing || len(e.Ports[0].Endpoints) != 1 || !found {
			t.Errorf("zone-hinted endpoint, client in zone %q: balancing %q, endpoints %+v, findings %q; want %q, one endpoint, finding %q",
				tc.zone, e.Ports[0].Balancing, e.Ports[0].Endpoints, e.Finds, tc.balancing, tc.find)
		}
	}
	// Node hints (PreferSameNode) before zone hints: client-0 is on
	// node-a.
	for sl := range st.Slices.Values() {
		if sl.Name == "web-1" {
			sl.Endpoints[0].Hints.ForNodes = []discoveryv1.ForNode{{Name: "node-a"}}
		}
	}
	byNode, _ := k8s.Convert(st, "cluster.local")
	if e, err := xds.Explain(byNode, both, "client-0.demo", "web.demo"); err != nil || e.Ports[0].Balancing != "client-ip-affinity,node:node-a" {
		t.Errorf("endpoint hinted for the client's node: balancing %q (%v), want client-ip-affinity,node:node-a", e.Ports[0].Balancing, err)
	}
	for sl := range st.Slices.Values() {
		sl.Endpoints[0].Hints = nil
	}
	// web-0 taking its port out of the interception: plaintext, and said
	// why (not "STRICT refuses").
	for p := range st.Pods.Values() {
		if p.Name == "web-0" {
			p.Annotations = map[string]string{k8s.AnnotationExcludeInboundPorts: "8080"}
		}
	}
	bypassed, _ := k8s.Convert(st, "cluster.local")
	e, err = xds.Explain(bypassed, both, "client-0.demo", "web.demo")
	if err != nil || e.Verdict != "plaintext" || len(e.Finds) != 1 || !strings.Contains(e.Finds[0], "meshd.io/exclude-inbound-ports") {
		t.Errorf("to a bypassed port: verdict %s, findings %q (%v); want plaintext, said why", e.Verdict, e.Finds, err)
	}
	// The client's outbound traffic registry-only: its sidecar refuses a
	// call to a pod's address (not a service).
	for p := range st.Pods.Values() {
		switch p.Name {
		case "client-0":
			p.Annotations = map[string]string{k8s.AnnotationOutboundTraffic: "registry-only"}
		case "web-0":
			p.Annotations = nil // its port intercepted again
		}
	}
	locked, _ := k8s.Convert(st, "cluster.local")
	e, err = xds.Explain(locked, both, "client-0.demo", "web-0.demo")
	if err != nil || !e.From.RegistryOnly || len(e.PodIP) == 0 || !strings.HasPrefix(e.PodIP[0].Outcome, "refused: the client's outbound traffic is registry-only") {
		t.Errorf("registry-only client to a pod's address: from %+v, pod-IP paths %+v (%v); want refused by the client's sidecar", e.From, e.PodIP, err)
	}
	if _, err := xds.Explain(snap, both, "nobody.demo", "web.demo"); err == nil {
		t.Error("unknown client: no error")
	}
	if _, err := xds.Explain(snap, both, "client-0.demo", "nothing.demo"); err == nil {
		t.Error("unknown target: no error")
	}
}

// TestExplainAuthorization: explain evaluates web-0's policies for the
// caller and names the deciding rule, the dry run's effect, and what the
// client would see.
func TestExplainAuthorization(t *testing.T) {
	policies := `---
apiVersion: meshd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: callers, namespace: demo}
spec:
  selector: {}
  action: ALLOW
  rules: [{from: {serviceAccounts: [demo/client]}, to: {methods: [GET]}}, {from: {serviceAccounts: [demo/admin]}}]
---
apiVersion: meshd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: lockdown, namespace: demo}
spec: {selector: {}, action: DENY, dryRun: true, rules: [{from: {namespaces: [demo]}}]}
`
	both := []xds.ProxyStatus{{NodeID: "web-0.demo"}, {NodeID: "client-0.demo"}}
	for name, c := range map[string]struct {
		yaml, want, rule, finding string
	}{
		"no policy":           {"", "allowed", "", ""},
		"limited by a rule":   {policies, "limited", "demo/callers/rule-0", "dry run on web-0.demo port 8080: with the dry-run policies enforced: denied by demo/lockdown/rule-0"},
		"denied by default":   {strings.ReplaceAll(policies, "demo/client", "demo/other"), "denied", "", "client-0.demo may not call web-0.demo on port 8080: denied: no rule of the ALLOW policies demo/callers"},
		"denied by DENY rule": {strings.ReplaceAll(policies, "dryRun: true", "dryRun: false"), "denied", "demo/lockdown/rule-0", "denied by demo/lockdown/rule-0"},
	} {
		t.Run(name, func(t *testing.T) {
			st, err := k8s.StateFromYAML([]byte(explainYAML + c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			snap, _ := k8s.Convert(st, "cluster.local")
			e, err := xds.Explain(snap, both, "client-0.demo", "web.demo")
			if err != nil {
				t.Fatal(err)
			}
			a := e.Ports[0].Endpoints[0].Authorization
			if e.Authorization != c.want || a == nil || a.Decision != c.want {
				t.Fatalf("authorization %q, endpoint %+v; want %s", e.Authorization, a, c.want)
			}
			if c.rule != "" && !slices.Contains(a.Rules, c.rule) {
				t.Errorf("deciding rules %v, want %s", a.Rules, c.rule)
			}
			if c.finding != "" && !slices.ContainsFunc(e.Finds, func(f string) bool { return strings.Contains(f, c.finding) }) {
				t.Errorf("findings %v, want one holding %q", e.Finds, c.finding)
			}
		})
	}
}

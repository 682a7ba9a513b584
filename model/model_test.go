package model_test

import (
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/model"
)

// TestLookups: Workload and Service find items by key in the sorted
// slices, and say nil for absent keys and for a nil snapshot.
func TestLookups(t *testing.T) {
	snap := &model.Snapshot{
		Workloads: []*model.Workload{{Name: "a-0", Namespace: "demo"}, {Name: "b-0", Namespace: "demo"}, {Name: "c-0", Namespace: "other"}},
		Services:  vec.Of([]*model.Service{{Name: "api", Namespace: "demo"}, {Name: "web", Namespace: "demo"}}),
	}
	for _, key := range []string{"a-0.demo", "b-0.demo", "c-0.other"} {
		if w := snap.Workload(key); w == nil || w.Key() != key {
			t.Errorf("Workload(%q) = %v", key, w)
		}
	}
	for _, key := range []string{"", "a-0", "b-0.other", "z.demo"} {
		if w := snap.Workload(key); w != nil {
			t.Errorf("Workload(%q) = %s, want nil", key, w.Key())
		}
	}
	if s := snap.Service("web.demo"); s == nil || s.Name != "web" {
		t.Errorf("Service(web.demo) = %v", s)
	}
	if s := snap.Service("web.other"); s != nil {
		t.Errorf("Service(web.other) = %v, want nil", s)
	}
	var none *model.Snapshot
	if none.Workload("a-0.demo") != nil || none.Service("web.demo") != nil {
		t.Error("a nil snapshot found something")
	}
}

// TestDetection: the pod's own timeout wins, then the snapshot's, then the
// default.
func TestDetection(t *testing.T) {
	w := &model.Workload{}
	if d := (&model.Snapshot{}).Detection(w); d != model.DefaultDetectionTimeout {
		t.Errorf("default: %s", d)
	}
	snap := &model.Snapshot{DetectionTimeout: 2 * time.Second}
	if d := snap.Detection(w); d != 2*time.Second {
		t.Errorf("mesh-wide: %s", d)
	}
	w.DetectionTimeout = 300 * time.Millisecond
	if d := snap.Detection(w); d != 300*time.Millisecond {
		t.Errorf("the pod's: %s", d)
	}
}

func TestProtocolAndIdentity(t *testing.T) {
	for p, want := range map[model.Protocol]bool{model.ProtocolHTTP: true, model.ProtocolHTTP2: true, model.ProtocolGRPC: true, model.ProtocolTCP: false} {
		if p.IsHTTP() != want {
			t.Errorf("%s.IsHTTP() = %v", p, !want)
		}
	}
	if id := model.SPIFFEID("cluster.local", "demo", "web"); id != "spiffe://cluster.local/ns/demo/sa/web" {
		t.Errorf("SPIFFEID = %s", id)
	}
}

// TestParseEgress: the annotation's entries, "." as the workload's
// namespace, "*/*" as no scope; malformed entries refused; Allows matches
// namespace and name with wildcards.
func TestParseEgress(t *testing.T) {
	for _, c := range []struct {
		in, want string // want "" with ok: every service
		ok       bool
	}{
		{"./*", "demo/*", true},
		{" ./web , kube-system/kube-dns,./web", "demo/web,kube-system/kube-dns", true},
		{"*/db", "*/db", true},
		{"./db,*/*", "", true},
		{"db", "", false},
		{"./Web", "", false},
		{"a.b/web", "", false},
		{",", "", false},
	} {
		e, err := model.ParseEgress(c.in, "demo")
		if (err == nil) != c.ok || e.Key() != c.want {
			t.Errorf("model.ParseEgress(%q) = %q, %v; want %q, ok %v", c.in, e.Key(), err, c.want, c.ok)
		}
	}
	e, _ := model.ParseEgress("./web,*/db", "demo")
	for svc, want := range map[[2]string]bool{{"demo", "web"}: true, {"other", "db"}: true, {"demo", "cache"}: false, {"other", "web"}: false} {
		if got := e.Allows(&model.Service{Namespace: svc[0], Name: svc[1]}); got != want {
			t.Errorf("%v allows %s/%s = %v", e, svc[0], svc[1], got)
		}
	}
}

// SameList tells the same list from an equal one.
func TestSameList(t *testing.T) {
	a := []int{1, 2, 3}
	for _, tc := range []struct {
		name string
		x, y []int
		want bool
	}{
		{"the same list", a, a, true},
		{"an equal copy", a, []int{1, 2, 3}, false},
		{"a shorter view", a, a[:2], false},
		{"both empty", nil, []int{}, true},
	} {
		if got := model.SameList(tc.x, tc.y); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// ForClient picks a client's endpoints as kube-proxy does: its node's for
// a node-local service (all when its node is not known), those hinted for
// its zone when one of them is ready, else all.
func TestServiceForClient(t *testing.T) {
	p := model.Port{Name: "http", Port: 80}
	svc := &model.Service{ZoneHints: true, Endpoints: []model.Endpoint{
		{PortName: "http", Address: "198.18.0.1", Ready: true, Node: "n1", ForZones: []string{"a"}},
		{PortName: "http", Address: "198.18.0.2", Ready: true, Node: "n2", ForZones: []string{"b"}},
		{PortName: "http", Address: "198.18.0.3", Ready: false, Node: "n3", ForZones: []string{"c"}},
		{PortName: "grpc", Address: "198.18.0.1", Ready: true, Node: "n1", ForZones: []string{"a"}},
	}}
	addrs := func(eps []model.Endpoint, _ string) string {
		var out []string
		for _, e := range eps {
			out = append(out, e.Address)
		}
		return strings.Join(out, " ")
	}
	for _, tc := range []struct {
		name              string
		nodeLocal, hinted bool
		node, zone, want  string
	}{
		{"zone a", false, true, "n2", "a", "198.18.0.1"},
		{"zone b", false, true, "n1", "b", "198.18.0.2"},
		{"zone c: its one endpoint not ready", false, true, "", "c", "198.18.0.1 198.18.0.2 198.18.0.3"},
		{"zone unknown", false, true, "n1", "", "198.18.0.1 198.18.0.2 198.18.0.3"},
		{"no hints", false, false, "n1", "a", "198.18.0.1 198.18.0.2 198.18.0.3"},
		{"node-local first", true, true, "n2", "a", "198.18.0.2"},
		{"node-local, a node without endpoints", true, true, "n9", "a", ""},
		{"node-local, node unknown", true, true, "", "a", "198.18.0.1 198.18.0.2 198.18.0.3"},
	} {
		s := *svc
		s.NodeLocal, s.ZoneHints = tc.nodeLocal, tc.hinted
		if got := addrs(s.ForClient(p, tc.node, tc.zone)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	// Node hints first (PreferSameNode: the controller writes both
	// kinds), then zone hints.
	byNode := &model.Service{ZoneHints: true, NodeHints: true, Endpoints: []model.Endpoint{
		{PortName: "http", Address: "198.18.0.1", Ready: true, ForNodes: []string{"n1"}, ForZones: []string{"a"}},
		{PortName: "http", Address: "198.18.0.2", Ready: true, ForNodes: []string{"n2"}, ForZones: []string{"a"}},
		{PortName: "http", Address: "198.18.0.3", Ready: false, ForNodes: []string{"n3"}, ForZones: []string{"b"}},
	}}
	for _, tc := range []struct {
		name, node, zone, want string
	}{
		{"its node's", "n2", "a", "198.18.0.2"},
		{"its node's not ready: its zone's", "n3", "a", "198.18.0.1 198.18.0.2"},
		{"node unknown: its zone's", "", "a", "198.18.0.1 198.18.0.2"},
		{"neither", "n9", "c", "198.18.0.1 198.18.0.2 198.18.0.3"},
	} {
		s := *byNode
		if got := addrs(s.ForClient(p, tc.node, tc.zone)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

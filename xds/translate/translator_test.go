package translate_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/model"
	"github.com/meshd/meshd/xds/translate"
)

// TestTranslatorIsShared: one Translator fed a sequence of snapshots (every
// golden input, then random changes of them: endpoints becoming ready or
// not, changing identity or gone, services gone, the connection age bound
// moved, scopes) gives, each time, exactly what a fresh translation gives,
// problems included.
func TestTranslatorIsShared(t *testing.T) {
	snaps := goldenSnapshots(t)
	rng := rand.New(rand.NewPCG(3, 4))
	var tr translate.Translator
	for i := range 400 {
		snap := mutate(rng, snaps[rng.IntN(len(snaps))])
		got, gotProblems := tr.Shared(snap)
		want, wantProblems := translate.Shared(snap)
		if err := sameResources(translate.Slices(got), want); err != nil || fmt.Sprint(gotProblems) != fmt.Sprint(wantProblems) {
			t.Fatalf("step %d: incremental translation differs: %v; problems %v, want %v", i, err, gotProblems, wantProblems)
		}
		e := model.Egress{"*/" + pickService(rng, snap)}
		got, _ = tr.Scoped(snap, e)
		want, _ = translate.Shared(snap.Scoped(e))
		if err := sameResources(translate.Slices(got), want); err != nil {
			t.Fatalf("step %d: scoped %v: %v", i, e, err)
		}
	}
}

// mutate returns a copy of snap with random changes; snap is not touched.
func mutate(rng *rand.Rand, snap *model.Snapshot) *model.Snapshot {
	c := *snap
	var services []*model.Service
	for svc := range snap.Services.Values() {
		if rng.IntN(8) == 0 {
			continue // gone
		}
		if rng.IntN(3) == 0 { // unchanged: the same value, as a Converter hands it on
			services = append(services, svc)
			continue
		}
		s := *svc
		s.Endpoints = slices.Clone(svc.Endpoints)
		for j := range s.Endpoints {
			switch rng.IntN(12) {
			case 0, 1, 2, 3:
				s.Endpoints[j].Ready = !s.Endpoints[j].Ready
			case 4: // another workload behind it: the clusters accept another identity
				s.Endpoints[j].Identity = model.SPIFFEID("cluster.local", s.Namespace, "other")
			case 5: // out of the mesh
				s.Endpoints[j].Identity = ""
			}
		}
		if len(s.Endpoints) > 0 && rng.IntN(4) == 0 { // one gone (a headless service's chain with it)
			i := rng.IntN(len(s.Endpoints))
			s.Endpoints = slices.Delete(s.Endpoints, i, i+1)
		}
		services = append(services, &s)
	}
	c.Services = vec.Of(services)
	if rng.IntN(4) == 0 {
		c.ConnectionMaxAge = time.Duration(rng.IntN(3)) * time.Hour
	}
	return &c
}

func pickService(rng *rand.Rand, snap *model.Snapshot) string {
	if snap.Services.Len() == 0 {
		return "none"
	}
	return snap.Services.At(rng.IntN(snap.Services.Len())).Name
}

func sameResources(got, want translate.Resources) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d types, want %d", len(got), len(want))
	}
	for typ, w := range want {
		g := got[typ]
		if len(g) != len(w) {
			return fmt.Errorf("%s: %d resources, want %d", typ, len(g), len(w))
		}
		for i := range w {
			if !proto.Equal(g[i], w[i]) {
				return fmt.Errorf("%s #%d: %v, want %v", typ, i, name(g[i]), name(w[i]))
			}
		}
	}
	return nil
}

func name(r types.Resource) string { return fmt.Sprintf("%T %v", r, r) }

// TestTranslatorAgeBoundMoves: the same services (the same values, as a
// Converter hands on services that did not change) under a new connection
// age bound are translated again.
func TestTranslatorAgeBoundMoves(t *testing.T) {
	for i, snap := range goldenSnapshots(t) {
		var tr translate.Translator
		for _, age := range []time.Duration{0, time.Hour, 2 * time.Hour, 0} {
			next := *snap
			next.ConnectionMaxAge = age
			got, _ := tr.Shared(&next)
			want, _ := translate.Shared(&next)
			if err := sameResources(translate.Slices(got), want); err != nil {
				t.Fatalf("golden input #%d, age bound %v: %v", i, age, err)
			}
		}
	}
}

// goldenSnapshots are the golden inputs' models.
func goldenSnapshots(t *testing.T) []*model.Snapshot {
	t.Helper()
	ins, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(ins) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	var snaps []*model.Snapshot
	for _, in := range ins {
		snap, _ := k8s.Convert(mustState(t, in), "cluster.local")
		snaps = append(snaps, snap)
	}
	return snaps
}

// TestTranslatorPatchesEndpointChanges: endpoint changes alone (services
// replaced by values differing in endpoints' readiness) give what a fresh
// translation gives, through the path that patches the last result's
// sorted lists, and leave the results handed on before as they were.
func TestTranslatorPatchesEndpointChanges(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 1))
	kept := 0 // steps whose cluster list is the last one's (patched, not built again)
	for i, snap := range goldenSnapshots(t) {
		var tr translate.Translator
		var before []translate.Lists
		var copies []map[resourcev3.Type][]types.Resource
		for step := range 30 {
			next := *snap
			p := snap.Services.Patch()
			for j, svc := range snap.Services.All() {
				if rng.IntN(2) == 0 {
					continue
				}
				s := *svc
				s.Endpoints = slices.Clone(svc.Endpoints)
				for k := range s.Endpoints {
					if rng.IntN(2) == 0 {
						s.Endpoints[k].Ready = !s.Endpoints[k].Ready
					}
				}
				p.Set(j, &s)
			}
			next.Services = p.Vec()
			snap = &next
			got, gotProblems := tr.Shared(snap)
			want, wantProblems := translate.Shared(snap)
			if err := sameResources(translate.Slices(got), want); err != nil || fmt.Sprint(gotProblems) != fmt.Sprint(wantProblems) {
				t.Fatalf("golden input #%d step %d: %v; problems %v, want %v", i, step, err, gotProblems, wantProblems)
			}
			for k, res := range before {
				for typ, items := range res {
					if !slices.Equal(items.Slice(), copies[k][typ]) {
						t.Fatalf("golden input #%d step %d: the %s list handed on at step %d changed", i, step, typ, k)
					}
				}
			}
			if n := len(before); n > 0 && got[resourcev3.ClusterType].Len() > 0 && got[resourcev3.ClusterType].Same(before[n-1][resourcev3.ClusterType]) {
				kept++
			}
			before = append(before, got)
			c := map[resourcev3.Type][]types.Resource{}
			for typ, items := range got {
				c[typ] = items.Slice()
			}
			copies = append(copies, c)
		}
	}
	if kept == 0 {
		t.Fatal("no endpoint change kept the cluster list")
	}
}

// TestTranslatorFollowsChunks: a snapshot of several chunks of services
// (see vec) whose next snapshots are patched in a few places, as the
// Converter hands them on (the other chunks shared), now and then replaced
// by a new list, translates each time as a fresh translation, and keeps the
// endpoint lists' untouched chunks.
func TestTranslatorFollowsChunks(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 2))
	snap := benchModel(5*vec.ChunkLen+3, 2)
	var tr translate.Translator
	last, _ := tr.Shared(snap)
	sharedChunks := 0
	for step := range 60 {
		next := *snap
		if step%10 == 9 { // a new list of the same services
			next.Services = vec.Of(snap.Services.Slice())
		} else {
			next.Services, _ = flipReady(rng, snap.Services)
		}
		snap = &next
		got, _ := tr.Shared(snap)
		want, _ := translate.Shared(snap)
		if err := sameResources(translate.Slices(got), want); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		eds, was := got[resourcev3.EndpointType], last[resourcev3.EndpointType]
		for b := range eds.Chunks() {
			if b < was.Chunks() && eds.SameChunk(was, b) {
				sharedChunks++
			}
		}
		last = got
	}
	if sharedChunks == 0 {
		t.Fatal("no endpoint list shared a chunk with the one before")
	}
}

// flipReady returns services patched as a Converter hands them on: one to
// three of them (changed) replaced by copies whose first endpoint's
// readiness flipped, the other chunks shared.
func flipReady(rng *rand.Rand, services vec.Vec[*model.Service]) (vec.Vec[*model.Service], []*model.Service) {
	var changed []*model.Service
	p := services.Patch()
	for range 1 + rng.IntN(3) {
		i := rng.IntN(services.Len())
		s := *p.At(i)
		s.Endpoints = slices.Clone(s.Endpoints)
		s.Endpoints[0].Ready = !s.Endpoints[0].Ready
		p.Set(i, &s)
		changed = append(changed, &s)
	}
	return p.Vec(), changed
}

// TestScopedFollowsChanges: scopes (exact entries, a namespace, a name
// wildcard) translated snapshot after snapshot, as the services change in
// their places, come and go, or are handed on as a new list, give each
// time what a fresh translation of the filtered snapshot gives; a scope
// none of whose services changed gets the very lists it got before.
func TestScopedFollowsChanges(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 1))
	snap := benchModel(5*vec.ChunkLen+3, 2)
	scopes := []model.Egress{
		{"ns1/svc1", "ns7/svc107", "ns40/svc240"},
		{"ns3/*"},
		{"*/svc17"},
	}
	var tr translate.Translator
	tr.Shared(snap)
	last := map[int]translate.Lists{}
	for i, e := range scopes {
		last[i], _ = tr.Scoped(snap, e)
	}
	kept := 0
	for step := range 80 {
		next := *snap
		var changed []*model.Service
		switch {
		case step%20 == 19: // a new list of the same services
			next.Services = vec.Of(snap.Services.Slice())
		case step%20 == 9: // a service gone
			list := snap.Services.Slice()
			i := rng.IntN(len(list))
			changed = append(changed, list[i])
			next.Services = vec.Of(slices.Delete(list, i, i+1))
		default: // endpoints changed in place
			next.Services, changed = flipReady(rng, snap.Services)
		}
		snap = &next
		tr.Shared(snap)
		for i, e := range scopes {
			got, _ := tr.Scoped(snap, e)
			want, _ := translate.Shared(snap.Scoped(e))
			if err := sameResources(translate.Slices(got), want); err != nil {
				t.Fatalf("step %d: scope %v: %v", step, e, err)
			}
			moved := slices.ContainsFunc(changed, func(s *model.Service) bool { return e.Allows(s) })
			if !moved && step%20 != 19 {
				for typ, l := range got {
					if !l.Same(last[i][typ]) {
						t.Errorf("step %d: scope %v: nothing of it changed, but its %s list is a new one", step, e, typ)
					}
				}
				kept++
			}
			last[i] = got
		}
	}
	if kept == 0 {
		t.Fatal("no step left a scope unchanged")
	}
}

// TestProxyEncodingIsStable: a sidecar's inbound listener whose RBAC
// filter holds several policies (a map in the proto) encodes to the same
// bytes every time it is translated, so its content-hash version does not
// move (it once did: the filter was wrapped in an Any by anypb.New, map
// entries in random order; Envoy drained the listener on each new version).
func TestProxyEncodingIsStable(t *testing.T) {
	snap := benchModel(3, 1)
	w := *snap.Workloads[0]
	// A TCP port (RBAC in the listener's filter) beside the HTTP one (RBAC
	// in its route).
	w.Ports = append(slices.Clone(w.Ports), model.Port{Name: "db", Port: 5432, Protocol: model.ProtocolTCP})
	for i, name := range []string{"a", "b", "c", "d", "e"} {
		w.Policies = append(w.Policies, &model.Policy{Namespace: w.Namespace, Name: name, Action: model.ActionAllow,
			Rules: []model.Rule{{From: &model.Source{Identities: []string{model.SPIFFEID("cluster.local", "ns1", fmt.Sprintf("svc%d", i))}}}}})
	}
	first := map[string][]byte{}
	for i := range 30 {
		res := translate.Proxy(snap, &w)
		if len(res[resourcev3.ListenerType]) != 1 || len(res[resourcev3.RouteType]) != 1 {
			t.Fatalf("resources %v, want the inbound listener and route", res)
		}
		for _, r := range append(res[resourcev3.ListenerType], res[resourcev3.RouteType]...) {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("%T", r)
			if i == 0 {
				first[name] = b
			} else if !bytes.Equal(b, first[name]) {
				t.Fatalf("translation %d encodes the %s differently from the first", i, name)
			}
		}
	}
}

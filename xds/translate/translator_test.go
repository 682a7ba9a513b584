package translate_test

import (
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
			p := snap.Services.Patch()
			for range 1 + rng.IntN(3) {
				i := rng.IntN(snap.Services.Len())
				s := *snap.Services.At(i)
				s.Endpoints = slices.Clone(s.Endpoints)
				s.Endpoints[0].Ready = !s.Endpoints[0].Ready
				p.Set(i, &s)
			}
			next.Services = p.Vec()
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

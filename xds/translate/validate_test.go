package translate_test

import (
	"path/filepath"
	"testing"

	"github.com/meshd/meshd/xds/translate"
)

// TestResourcesValidate runs the proto validators go-control-plane ships
// over everything translated from the golden inputs: a broken resource is
// caught here, not by a sidecar's NACK.
func TestResourcesValidate(t *testing.T) {
	ins, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(ins) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	for _, in := range ins {
		snap := load(t, in)
		shared, _ := translate.Shared(snap)
		all := []translate.Resources{shared}
		for _, w := range snap.Workloads {
			if w.Meshed {
				all = append(all, translate.Proxy(snap, w))
			}
		}
		for _, res := range all {
			for typ, items := range res {
				for _, r := range items {
					v, ok := r.(interface{ ValidateAll() error })
					if !ok {
						t.Fatalf("%s: %T has no validator", typ, r)
					}
					if err := v.ValidateAll(); err != nil {
						t.Errorf("%s: %s: %v", filepath.Base(in), typ, err)
					}
				}
			}
		}
	}
}

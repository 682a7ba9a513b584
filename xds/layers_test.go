package xds_test

import (
	"go/build"
	"slices"
	"strings"
	"testing"
)

// TestPackageLayers: xds's sub-packages import of meshd only what their
// package docs allow (none of them xds itself, cache and publish not each
// other; the leaf internal/vec), and xds/resource does no I/O.
func TestPackageLayers(t *testing.T) {
	const resource, vec = "github.com/meshd/meshd/xds/resource", "github.com/meshd/meshd/internal/vec"
	for dir, allowed := range map[string][]string{
		"resource":  {vec},
		"cache":     {resource, vec},
		"publish":   {resource, vec},
		"translate": {"github.com/meshd/meshd/model", "github.com/meshd/meshd/sds", vec},
	} {
		pkg, err := build.ImportDir(dir, 0)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		if len(pkg.Imports) == 0 {
			t.Fatalf("%s: no imports read", dir)
		}
		for _, imp := range pkg.Imports {
			if strings.HasPrefix(imp, "github.com/meshd/meshd") && !slices.Contains(allowed, imp) {
				t.Errorf("xds/%s imports %s", dir, imp)
			}
			if dir == "resource" && slices.Contains([]string{"os", "net", "io/fs", "net/http", "log/slog", "time"}, imp) {
				t.Errorf("xds/resource imports %s (no I/O, no clock)", imp)
			}
		}
	}
}

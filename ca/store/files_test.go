package store_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshd/meshd/ca/store"
)

// TestFilesErrors: a directory store answers with the Store's own errors
// (no Kubernetes ones): a missing record, a second Create, an Update from a
// stale read, and a key that cannot be a file name.
func TestFilesErrors(t *testing.T) {
	ctx := context.Background()
	f := store.Files{Dir: t.TempDir()}
	if _, err := f.Get(ctx, "ca"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get of a missing record: %v, want ErrNotFound", err)
	}
	first, err := f.Create(ctx, &store.Record{Name: "ca", Data: map[string][]byte{"k": []byte("1")}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Create(ctx, &store.Record{Name: "ca", Data: map[string][]byte{"k": []byte("2")}}); !errors.Is(err, store.ErrExists) {
		t.Errorf("second Create: %v, want ErrExists", err)
	}
	next := first.Clone()
	next.Data["k"] = []byte("3")
	if _, err := f.Update(ctx, next); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Update(ctx, first); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Update from a stale read: %v, want ErrConflict", err)
	}
	got, err := f.Get(ctx, "ca")
	if err != nil || string(got.Data["k"]) != "3" {
		t.Fatalf("after the updates: %v, k=%q; want 3", err, got.Data["k"])
	}
	bad := got.Clone()
	bad.Data["../escape"] = []byte("x")
	if _, err := f.Update(ctx, bad); err == nil {
		t.Error("a key with a path separator was written")
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(f.Dir), "escape")); err == nil {
		t.Error("a key escaped the store's directory")
	}
}

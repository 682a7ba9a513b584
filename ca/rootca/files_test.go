package rootca_test

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/ca/store"
)

func TestFilesCreateIfAbsent(t *testing.T) {
	st := store.Files{Dir: t.TempDir()}
	var wg sync.WaitGroup
	roots := make([]*ca.Authority, 4)
	for i := range roots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if roots[i], err = rootca.LoadOrCreate(context.Background(), st, "meshd-ca", "cluster.local", rand.Reader, time.Now()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for i := range roots {
		if roots[i] == nil || !roots[i].Cert.Equal(roots[0].Cert) {
			t.Fatalf("process %d got a different root", i)
		}
	}
}

// TestFilesUpdate: an update swaps the whole record at once, keeps
// annotations, and refuses a writer that read an older version.
func TestFilesUpdate(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := store.Files{Dir: dir}
	if _, err := rootca.LoadOrCreate(ctx, st, "meshd-ca", "cluster.local", rand.Reader, time.Now()); err != nil {
		t.Fatal(err)
	}
	a, err := st.Get(ctx, "meshd-ca")
	if err != nil {
		t.Fatal(err)
	}
	stale := a.Clone()
	a.Annotations = map[string]string{"meshd.io/rotate-root": "true"}
	a.Data["extra"] = []byte("x")
	b, err := st.Update(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	got, err := st.Get(ctx, "meshd-ca")
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != b.Version || got.Annotations["meshd.io/rotate-root"] != "true" || string(got.Data["extra"]) != "x" {
		t.Errorf("after Update: version %s (want %s), annotations %v, extra %q", got.Version, b.Version, got.Annotations, got.Data["extra"])
	}
	if _, err := st.Update(ctx, stale); !errors.Is(err, store.ErrConflict) {
		t.Errorf("update from a stale read: %v, want Conflict", err)
	}
	if _, err := rootca.Load(ctx, st, "meshd-ca", time.Now()); err != nil {
		t.Errorf("root after updates: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 { // CA and trust record: a symlink and one version directory each
		t.Errorf("%d entries left in the CA dir, want 4 (old versions removed)", len(entries))
	}
}

// TestDeletedCAIsRefused: once a mesh has a root, a missing CA Secret is
// an error naming the way out, not a reason to mint a new root; removing
// the trust record too starts a new mesh on purpose.
func TestDeletedCAIsRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := store.Files{Dir: dir}
	first, err := rootca.LoadOrCreate(ctx, st, "meshd-ca", "cluster.local", rand.Reader, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	again, err := rootca.LoadOrCreate(ctx, st, "meshd-ca", "cluster.local", rand.Reader, time.Now())
	if err != nil || !again.Cert.Equal(first.Cert) {
		t.Fatalf("restart: %v", err)
	}
	if err := os.Remove(dir + "/meshd-ca"); err != nil {
		t.Fatal(err)
	}
	_, err = rootca.LoadOrCreate(ctx, st, "meshd-ca", "cluster.local", rand.Reader, time.Now())
	if err == nil || !strings.Contains(err.Error(), "restore meshd-ca from a backup") {
		t.Fatalf("deleted CA secret: %v, want a refusal naming the way out", err)
	}
	if err := os.Remove(dir + "/meshd-ca-trust"); err != nil {
		t.Fatal(err)
	}
	fresh, err := rootca.LoadOrCreate(ctx, st, "meshd-ca", "cluster.local", rand.Reader, time.Now())
	if err != nil || fresh.Cert.Equal(first.Cert) {
		t.Fatalf("new mesh on purpose: %v", err)
	}
}

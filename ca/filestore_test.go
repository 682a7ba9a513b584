package ca_test

import (
	"context"
	"crypto/rand"
	"os"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/ca"
)

func TestFileSecretsCreateIfAbsent(t *testing.T) {
	store := ca.FileSecrets{Dir: t.TempDir()}
	var wg sync.WaitGroup
	roots := make([]*ca.Authority, 4)
	for i := range roots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if roots[i], err = ca.LoadOrCreateRoot(context.Background(), store, "meshd-ca", "cluster.local", rand.Reader, time.Now()); err != nil {
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

// TestFileSecretsUpdate: an update swaps the whole Secret at once, keeps
// annotations, and refuses a writer that read an older version.
func TestFileSecretsUpdate(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := ca.FileSecrets{Dir: dir}
	if _, err := ca.LoadOrCreateRoot(ctx, store, "meshd-ca", "cluster.local", rand.Reader, time.Now()); err != nil {
		t.Fatal(err)
	}
	a, err := store.Get(ctx, "meshd-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stale := a.DeepCopy()
	a.Annotations = map[string]string{"meshd.io/rotate-root": "true"}
	a.Data["extra"] = []byte("x")
	b, err := store.Update(ctx, a, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := store.Get(ctx, "meshd-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.ResourceVersion != b.ResourceVersion || got.Annotations["meshd.io/rotate-root"] != "true" || string(got.Data["extra"]) != "x" {
		t.Errorf("after Update: version %s (want %s), annotations %v, extra %q", got.ResourceVersion, b.ResourceVersion, got.Annotations, got.Data["extra"])
	}
	if _, err := store.Update(ctx, stale, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		t.Errorf("update from a stale read: %v, want Conflict", err)
	}
	if _, err := ca.LoadRoot(ctx, store, "meshd-ca", time.Now()); err != nil {
		t.Errorf("root after updates: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 { // the symlink and one version directory
		t.Errorf("%d entries left in the CA dir, want 2 (old versions removed)", len(entries))
	}
}

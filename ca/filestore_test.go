package ca_test

import (
	"context"
	"crypto/rand"
	"os"
	"strings"
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
	store := ca.FileSecrets{Dir: dir}
	first, err := ca.LoadOrCreateRoot(ctx, store, "meshd-ca", "cluster.local", rand.Reader, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	again, err := ca.LoadOrCreateRoot(ctx, store, "meshd-ca", "cluster.local", rand.Reader, time.Now())
	if err != nil || !again.Cert.Equal(first.Cert) {
		t.Fatalf("restart: %v", err)
	}
	if err := os.Remove(dir + "/meshd-ca"); err != nil {
		t.Fatal(err)
	}
	_, err = ca.LoadOrCreateRoot(ctx, store, "meshd-ca", "cluster.local", rand.Reader, time.Now())
	if err == nil || !strings.Contains(err.Error(), "restore meshd-ca from a backup") {
		t.Fatalf("deleted CA secret: %v, want a refusal naming the way out", err)
	}
	if err := os.Remove(dir + "/meshd-ca-trust"); err != nil {
		t.Fatal(err)
	}
	fresh, err := ca.LoadOrCreateRoot(ctx, store, "meshd-ca", "cluster.local", rand.Reader, time.Now())
	if err != nil || fresh.Cert.Equal(first.Cert) {
		t.Fatalf("new mesh on purpose: %v", err)
	}
}

package ca_test

import (
	"context"
	"crypto/rand"
	"sync"
	"testing"
	"time"

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

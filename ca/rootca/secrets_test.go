package rootca_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/ca/store"
	"github.com/meshd/meshd/internal/testenv"
)

// TestRootConcurrentStartAgainstAPIServer: replicas starting at once end up
// with one root; a restart reads it back; corrupted material is refused and
// left as it is.
func TestRootConcurrentStartAgainstAPIServer(t *testing.T) {
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ns := "ca-root-test"
	if err := env.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	secrets := env.Client.CoreV1().Secrets(ns)
	st := store.Secrets{Client: secrets}
	const replicas = 8
	roots := make([]*ca.Authority, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			roots[i], errs[i] = rootca.LoadOrCreate(ctx, st, "meshd-ca", "cluster.local", rand.Reader, time.Now())
		}()
	}
	close(start)
	wg.Wait()
	for i := range replicas {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		if !roots[i].Cert.Equal(roots[0].Cert) {
			t.Fatalf("replica %d has root serial %s, replica 0 has %s", i, roots[i].Cert.SerialNumber, roots[0].Cert.SerialNumber)
		}
	}
	again, err := rootca.LoadOrCreate(ctx, st, "meshd-ca", "cluster.local", rand.Reader, time.Now())
	if err != nil || !again.Cert.Equal(roots[0].Cert) {
		t.Fatalf("restart: %v, same root %v", err, err == nil && again.Cert.Equal(roots[0].Cert))
	}

	s, err := secrets.Get(ctx, "meshd-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Data[rootca.KeyCAKey] = []byte("garbage")
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rootca.LoadOrCreate(ctx, st, "meshd-ca", "cluster.local", rand.Reader, time.Now()); err == nil {
		t.Fatal("corrupted CA secret accepted")
	} else {
		fmt.Println("corrupted CA secret refused:", err)
	}
	after, _ := secrets.Get(ctx, "meshd-ca", metav1.GetOptions{})
	if string(after.Data[rootca.KeyCAKey]) != "garbage" {
		t.Fatal("corrupted CA secret was replaced")
	}
}

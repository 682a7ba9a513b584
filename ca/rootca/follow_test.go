package rootca_test

import (
	"context"
	"crypto/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/ca/store"
)

type signer struct {
	mu sync.Mutex
	a  *ca.Authority
}

func (s *signer) Authority() *ca.Authority     { s.mu.Lock(); defer s.mu.Unlock(); return s.a }
func (s *signer) SetAuthority(a *ca.Authority) { s.mu.Lock(); defer s.mu.Unlock(); s.a = a }

// TestFollower walks the Follower through its rounds with a fake clock: an
// unchanged record changes nothing; a requested rotation is stepped only by
// the leader, and the new bundle swaps the signer's authority and re-issues
// once; an unreadable record reports unhealthy and keeps the current CA.
func TestFollower(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := store.Files{Dir: t.TempDir()}
	t0 := time.Now()
	root, err := rootca.LoadOrCreate(ctx, st, "meshd-ca", "cluster.local", rand.Reader, t0)
	if err != nil {
		t.Fatal(err)
	}
	sig := &signer{a: root}
	fc := clocktesting.NewFakeClock(t0)
	var leader atomic.Bool
	var reissued atomic.Int32
	healthy := make(chan bool, 1)
	f, err := rootca.NewFollower(rootca.FollowConfig{Store: st, Name: "meshd-ca", TrustDomain: "cluster.local", Signer: sig, Rand: rand.Reader,
		LeafTTL: time.Hour, Grace: 10 * time.Minute, Every: 30 * time.Second, IsLeader: leader.Load,
		Reissue: func() { reissued.Add(1) }, Healthy: func(ok bool) { healthy <- ok }, Clock: fc})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- f.Start(ctx) }()
	if !<-healthy {
		t.Fatal("healthy = false at start")
	}
	// round ticks the clock once and returns what the round reported.
	round := func() bool {
		t.Helper()
		for !fc.HasWaiters() {
			time.Sleep(time.Millisecond)
		}
		fc.Step(30 * time.Second)
		return <-healthy
	}
	if !round() || reissued.Load() != 0 || sig.Authority() != root {
		t.Fatalf("unchanged record: re-issued %d times, authority swapped = %v", reissued.Load(), sig.Authority() != root)
	}

	rec, _ := st.Get(ctx, "meshd-ca")
	rootca.RequestRotation(rec)
	if _, err := st.Update(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if !round() || reissued.Load() != 0 {
		t.Fatalf("rotation requested, not leader: re-issued %d times; want none (only the leader steps)", reissued.Load())
	}
	leader.Store(true)
	if !round() || reissued.Load() != 1 {
		t.Fatalf("rotation requested, leader: re-issued %d times; want 1", reissued.Load())
	}
	if a := sig.Authority(); len(a.Roots) != 2 || !a.Cert.Equal(root.Cert) {
		t.Fatalf("bundle phase: %d roots, old root signs = %v; want both roots trusted, the old one signing", len(a.Roots), a.Cert.Equal(root.Cert))
	}
	if phase, _ := f.Phase(); phase != string(rootca.PhaseBundle) {
		t.Errorf("Phase() = %q; want %q", phase, rootca.PhaseBundle)
	}

	leader.Store(false)
	swapped := sig.Authority()
	rec, _ = st.Get(ctx, "meshd-ca")
	rec.Data[rootca.KeyRootCert] = []byte("not a certificate")
	if _, err := st.Update(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if round() {
		t.Error("corrupted record: healthy = true")
	}
	if reissued.Load() != 1 || sig.Authority() != swapped {
		t.Errorf("corrupted record: re-issued %d times (want 1), authority replaced = %v (want kept)", reissued.Load(), sig.Authority() != swapped)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Start = %v after ctx ended; want nil", err)
	}
}

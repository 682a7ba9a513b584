package rootca_test

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/ca/store"
	"github.com/meshd/meshd/internal/testenv"
)

// TestRootRotationAgainstAPIServer walks a root rotation through its phases
// with the state in a real Secret: bundle (old+new, old signs), signing (new
// signs, both trusted), done (new only); a new Rotator (a restarted leader)
// resumes mid-way; steps before their time change nothing.
func TestRootRotationAgainstAPIServer(t *testing.T) {
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ns := "ca-rotation-test"
	if err := env.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	walkRotation(ctx, t, store.Secrets{Client: env.Client.CoreV1().Secrets(ns)})
}

// TestRootRotationWithFiles walks the same rotation with the CA kept
// in files (meshd serve --ca-dir), which `meshd ca rotate-root --ca-dir`
// triggers.
func TestRootRotationWithFiles(t *testing.T) {
	walkRotation(context.Background(), t, store.Files{Dir: t.TempDir()})
}

func walkRotation(ctx context.Context, t *testing.T, secrets store.Store) {
	t.Helper()
	t0 := time.Now()
	old, err := rootca.LoadOrCreate(ctx, secrets, "meshd-ca", "cluster.local", rand.Reader, t0)
	if err != nil {
		t.Fatal(err)
	}
	cfg := rootca.RotationConfig{Store: secrets, Name: "meshd-ca", TrustDomain: "cluster.local", Rand: rand.Reader,
		Grace: 10 * time.Minute, LeafTTL: time.Hour}
	rot, _ := rootca.NewRotator(cfg)
	step := func(now time.Time, want rootca.Phase, wantChanged bool) *ca.Authority {
		t.Helper()
		phase, changed, err := rot.Step(ctx, now)
		if err != nil || phase != want || changed != wantChanged {
			t.Fatalf("Step at +%s = %q changed=%v err=%v; want %q changed=%v", now.Sub(t0), phase, changed, err, want, wantChanged)
		}
		a, err := rootca.Load(ctx, secrets, "meshd-ca", now)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	// Nothing asked, root far from expiry: nothing happens.
	step(t0, rootca.PhaseSteady, false)

	s, _ := secrets.Get(ctx, "meshd-ca")
	s.Annotations = map[string]string{rootca.AnnotationRotate: "true"}
	if _, err := secrets.Update(ctx, s); err != nil {
		t.Fatal(err)
	}
	a := step(t0, rootca.PhaseBundle, true)
	if len(a.Roots) != 2 || !a.Cert.Equal(old.Cert) {
		t.Fatalf("bundle phase: %d roots, old signs = %v; want 2 roots, old signing", len(a.Roots), a.Cert.Equal(old.Cert))
	}
	newRoot := a.Roots[1]
	step(t0.Add(5*time.Minute), rootca.PhaseBundle, false) // before the grace period

	rot, _ = rootca.NewRotator(cfg) // a restarted leader resumes from the Secret
	a = step(t0.Add(11*time.Minute), rootca.PhaseSigning, true)
	if len(a.Roots) != 2 || !a.Cert.Equal(newRoot) {
		t.Fatal("signing phase: the new root must sign while both are trusted")
	}
	in, _ := ca.NewInternal(ca.InternalConfig{Authority: a, Clock: clocktesting.NewFakePassiveClock(t0.Add(11 * time.Minute))})
	leaf, err := in.Issue(ctx, ca.Request{Identity: web})
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.Leaf.CheckSignatureFrom(newRoot); err != nil {
		t.Errorf("leaf issued in the signing phase is not signed by the new root: %v", err)
	}
	step(t0.Add(50*time.Minute), rootca.PhaseSigning, false) // leaves still renewing
	a = step(t0.Add(90*time.Minute), rootca.PhaseSteady, true)
	if len(a.Roots) != 1 || !a.Roots[0].Equal(newRoot) || !a.Cert.Equal(newRoot) {
		t.Fatal("after rotation only the new root must be trusted and sign")
	}
}

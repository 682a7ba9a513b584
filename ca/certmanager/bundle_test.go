package certmanager_test

import (
	"context"
	"crypto/rand"
	"log/slog"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/certmanager"
	"github.com/meshd/meshd/internal/testenv"
)

// TestTrustBundleSource: --trust-bundle configmap/<name>/<key> follows the
// ConfigMap on the real apiserver: the bundle is served once it exists, a
// change triggers re-issuance, and a key without a certificate is refused
// while the previous bundle stays.
func TestTrustBundleSource(t *testing.T) {
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ns = "bundle-test"
	if err := env.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	root := func() string {
		a, err := ca.NewRoot(rand.Reader, time.Now(), "cluster.local")
		if err != nil {
			t.Fatal(err)
		}
		return string(a.BundlePEM)
	}
	// Each re-issue records the bundle served when it was asked for.
	// OnChange runs on the informer's one handler goroutine, after set()
	// stored the bundle, in event order: once a re-issue for the latest
	// bundle is recorded, every earlier event has had its say, so the count
	// is final without waiting to see that nothing more comes.
	var mu sync.Mutex
	var changes []string
	var b *certmanager.BundleSource
	b = certmanager.NewBundleSource(certmanager.BundleConfig{Client: env.Client, Namespace: ns, Kind: "configmap", Name: "mesh-roots", Key: "ca.crt",
		Logger: slog.Default(), OnChange: func() {
			mu.Lock()
			defer mu.Unlock()
			changes = append(changes, string(b.PEM()))
		}})
	count := func() (int, string) {
		mu.Lock()
		defer mu.Unlock()
		if len(changes) == 0 {
			return 0, ""
		}
		return len(changes), changes[len(changes)-1]
	}
	go func() { _ = b.Start(ctx) }()
	waitBundle := func(want string) {
		t.Helper()
		if err := wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(context.Context) (bool, error) {
			return string(b.PEM()) == want, nil
		}); err != nil {
			t.Fatalf("bundle never became the ConfigMap's (%d bytes now)", len(b.PEM()))
		}
	}
	waitChanges := func(want int, latest, what string) {
		t.Helper()
		if err := wait.PollUntilContextCancel(ctx, 20*time.Millisecond, true, func(context.Context) (bool, error) {
			_, last := count()
			return last == latest, nil
		}); err != nil {
			n, _ := count()
			t.Fatalf("no re-issue for the latest bundle %s (%d re-issues)", what, n)
		}
		if n, _ := count(); n != want {
			t.Errorf("%d re-issues %s; want %d", n, what, want)
		}
	}
	first, second := root(), root()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "mesh-roots"}, Data: map[string]string{"ca.crt": first}}
	cm, err := env.Client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitBundle(first)
	if n, _ := count(); n != 0 {
		t.Errorf("%d re-issues for the first bundle; want none", n)
	}
	cm.Data["ca.crt"] = second
	if cm, err = env.Client.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitBundle(second)
	waitChanges(1, second, "after one change")
	cm.Data["ca.crt"] = "not a certificate"
	if cm, err = env.Client.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Events arrive in order: when the good update after the bad one is
	// served, the bad one was seen; it must not have counted as a change.
	third := root()
	cm.Data["ca.crt"] = third
	if _, err = env.Client.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitBundle(third)
	waitChanges(2, third, "after a bad and a good change (the bad one ignored)")
}

package ca_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/testenv"
)

// flakyIssuer wraps an issuer and fails while fail is set.
type flakyIssuer struct {
	ca.Issuer
	mu   sync.Mutex
	fail bool
	n    int
}

func (f *flakyIssuer) Issue(ctx context.Context, r ca.Request) (*ca.Certificate, error) {
	f.mu.Lock()
	f.n++
	fail := f.fail
	f.mu.Unlock()
	if fail {
		return nil, errors.New("issuer down")
	}
	return f.Issuer.Issue(ctx, r)
}

func (f *flakyIssuer) setFail(v bool) { f.mu.Lock(); f.fail = v; f.mu.Unlock() }
func (f *flakyIssuer) calls() int     { f.mu.Lock(); defer f.mu.Unlock(); return f.n }

func TestRenewerFakeClock(t *testing.T) {
	fc, in := fakeCA(t, time.Hour)
	flaky := &flakyIssuer{Issuer: in}
	r, certs := watchWeb(t, ca.RenewerConfig{Issuer: flaky, Clock: fc, MinBackoff: time.Second})

	first := <-certs
	waitTimer(t, fc)
	// u=0.5 means no jitter: renewal at exactly half the lifetime, counted
	// from issuance (NotBefore is backdated one minute for clock skew).
	fc.Step(29 * time.Minute)
	select {
	case <-certs:
		t.Fatal("renewed before half-life")
	case <-time.After(50 * time.Millisecond):
	}
	fc.Step(time.Minute)
	second := <-certs
	if second.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 || second.KeyPEM == nil || string(second.KeyPEM) == string(first.KeyPEM) {
		t.Fatal("renewal did not bring a new certificate with a fresh key")
	}

	// Failures back off and retry; the old certificate stays in use meanwhile.
	flaky.setFail(true)
	waitTimer(t, fc)
	fc.Step(30 * time.Minute)
	waitCalls(t, flaky, 3)
	waitTimer(t, fc)
	fc.Step(time.Second) // first backoff
	waitCalls(t, flaky, 4)
	flaky.setFail(false)
	waitTimer(t, fc)
	fc.Step(2 * time.Second) // doubled backoff
	<-certs

	// Reissue (bundle changed) issues at once.
	waitTimer(t, fc)
	r.Reissue()
	select {
	case <-certs:
	case <-time.After(5 * time.Second):
		t.Fatal("Reissue did not issue")
	}
}

// watchWeb starts a renewer of cfg (no jitter) watching web-0.demo until
// the test ends; its certificates arrive on the channel.
func watchWeb(t *testing.T, cfg ca.RenewerConfig) (*ca.Renewer, <-chan *ca.Certificate) {
	t.Helper()
	cfg.Random = func() float64 { return 0.5 }
	r, err := ca.NewRenewer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	certs := make(chan *ca.Certificate, 10)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r.Watch(ctx, "web-0.demo", ca.Request{Identity: web}, func(c *ca.Certificate) { certs <- c })
	return r, certs
}

func TestRenewDelayJitterBand(t *testing.T) {
	nb := time.Unix(0, 0)
	na := nb.Add(24 * time.Hour)
	for _, u := range []float64{0, 0.25, 0.5, 0.75, 0.9999} {
		d := ca.RenewDelay(nb, na, nb, 0.5, 0.1, u)
		if d < 10*time.Hour+48*time.Minute || d > 13*time.Hour+12*time.Minute {
			t.Errorf("u=%v: renew after %s, want within 12h ±10%%", u, d)
		}
	}
	if d := ca.RenewDelay(nb, na, na, 0.5, 0.1, 0.5); d != 0 {
		t.Errorf("past renewal time: delay %s, want 0", d)
	}
}

// fakeCA is an internal CA issuing certificates of the given lifetime on
// a fake clock.
func fakeCA(t *testing.T, ttl time.Duration) (*clocktesting.FakeClock, *ca.Internal) {
	t.Helper()
	fc := clocktesting.NewFakeClock(time.Now())
	return fc, internalCA(t, ca.InternalConfig{TTL: ttl, Clock: fc})
}

func waitTimer(t *testing.T, fc *clocktesting.FakeClock) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !fc.HasWaiters() {
		if time.Now().After(deadline) {
			t.Fatal("renewer armed no timer")
		}
		time.Sleep(time.Millisecond)
	}
}

func waitCalls(t *testing.T, f *flakyIssuer, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for f.calls() < n {
		if time.Now().After(deadline) {
			t.Fatalf("issuer called %d times, want %d", f.calls(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRenewerShortLifetime: with a lifetime not much longer than the issuer's
// one-minute backdating, renewal still comes at half the lifetime after
// issuance, not at once (a renewal loop seen with 1-minute certificates).
func TestRenewerShortLifetime(t *testing.T) {
	fc, in := fakeCA(t, time.Minute)
	_, certs := watchWeb(t, ca.RenewerConfig{Issuer: in, Clock: fc})
	<-certs
	waitTimer(t, fc)
	fc.Step(29 * time.Second)
	select {
	case <-certs:
		t.Fatal("renewed before half the lifetime")
	case <-time.After(100 * time.Millisecond):
	}
	fc.Step(time.Second)
	select {
	case <-certs:
	case <-time.After(5 * time.Second):
		t.Fatal("no renewal at half the lifetime")
	}
}

// Watches that wait for their renewal hold no goroutine each: one serves
// them all, and it ends with the last watch.
func TestRenewerWaitingWatchesShareOneGoroutine(t *testing.T) {
	fc, in := fakeCA(t, time.Hour)
	r, err := ca.NewRenewer(ca.RenewerConfig{Issuer: in, Clock: fc})
	if err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	const watches = 200
	certs := make(chan *ca.Certificate, 2*watches)
	ctx, cancel := context.WithCancel(context.Background())
	for i := range watches {
		r.Watch(ctx, fmt.Sprintf("web-%d.demo", i), ca.Request{Identity: web}, func(c *ca.Certificate) { certs <- c })
	}
	for range watches {
		<-certs
	}
	waitTimer(t, fc)
	waitGoroutines(t, func(n int) bool { return n <= before+2 }, "while every watch waits for its renewal")
	// All renew (at 27-33 minutes with the default jitter).
	fc.Step(34 * time.Minute)
	for range watches {
		select {
		case <-certs:
		case <-time.After(10 * time.Second):
			t.Fatal("not every watch renewed")
		}
	}
	cancel()
	waitGoroutines(t, func(n int) bool { return n <= before }, "after every watch ended")
}

func waitGoroutines(t *testing.T, ok func(int) bool, when string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok(runtime.NumGoroutine()) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines %s", runtime.NumGoroutine(), when)
		}
		time.Sleep(time.Millisecond)
	}
}

// blockingIssuer holds its first issuance until release is closed.
type blockingIssuer struct {
	ca.Issuer
	started, release chan struct{}
	once             sync.Once
}

func (b *blockingIssuer) Issue(ctx context.Context, r ca.Request) (*ca.Certificate, error) {
	first := false
	b.once.Do(func() { first = true })
	if first {
		close(b.started)
		<-b.release
	}
	return b.Issuer.Issue(ctx, r)
}

// A Reissue while a certificate is being issued (perhaps under the old
// root) issues it again as soon as that issuance ends.
func TestRenewerReissueDuringIssuance(t *testing.T) {
	fc, in := fakeCA(t, time.Hour)
	b := &blockingIssuer{Issuer: in, started: make(chan struct{}), release: make(chan struct{})}
	r, err := ca.NewRenewer(ca.RenewerConfig{Issuer: b, Clock: fc})
	if err != nil {
		t.Fatal(err)
	}
	certs := make(chan *ca.Certificate, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.Watch(ctx, "web-0.demo", ca.Request{Identity: web}, func(c *ca.Certificate) { certs <- c })
	<-b.started
	r.Reissue()
	close(b.release)
	<-certs
	select {
	case <-certs:
	case <-time.After(5 * time.Second):
		t.Fatal("the certificate issued across a Reissue was not issued again")
	}
}

// TestRenewerLogsLateRenewal: a renewal that starts well after it was due
// (the process held up: the fake clock jumps past the due time) is logged
// with how late it is; one on time is not.
func TestRenewerLogsLateRenewal(t *testing.T) {
	fc, in := fakeCA(t, time.Hour)
	var logs testenv.SyncBuffer
	_, certs := watchWeb(t, ca.RenewerConfig{Issuer: in, Clock: fc, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	<-certs
	waitTimer(t, fc)
	fc.Step(30 * time.Minute) // due at half the lifetime: on time
	<-certs
	if strings.Contains(logs.String(), "late") {
		t.Fatalf("a renewal on time was logged late: %s", logs.String())
	}
	waitTimer(t, fc)
	fc.Step(30*time.Minute + 20*time.Second)
	<-certs
	if got := logs.String(); !strings.Contains(got, "ca: a renewal started late") || !strings.Contains(got, "late=20") {
		t.Fatalf("a renewal 20s late: log %q", got)
	}
}

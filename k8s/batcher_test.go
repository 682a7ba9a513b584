package k8s

import (
	"context"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// waitWaiters waits until the batcher's goroutine has armed a timer.
func waitWaiters(t *testing.T, fc *clocktesting.FakeClock) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !fc.HasWaiters() {
		if time.Now().After(deadline) {
			t.Fatal("batcher never armed a timer")
		}
		time.Sleep(time.Millisecond)
	}
}

func expectCalls(t *testing.T, calls <-chan time.Time, want int) {
	t.Helper()
	got := 0
	timeout := time.After(200 * time.Millisecond)
	for {
		select {
		case <-calls:
			got++
		case <-timeout:
			if got != want {
				t.Fatalf("fn called %d times, want %d", got, want)
			}
			return
		}
	}
}

func TestBatcherHoldOffAndMaxDelay(t *testing.T) {
	fc := clocktesting.NewFakeClock(time.Unix(0, 0))
	b := NewBatcher(100*time.Millisecond, 300*time.Millisecond, fc)
	calls := make(chan time.Time, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.Run(ctx, func(context.Context, time.Time) { calls <- fc.Now() })

	// The first change: at once, nothing to batch it with.
	b.Notify()
	expectCalls(t, calls, 1)

	// One right after: fn runs after the hold-off, not before.
	fc.Step(10 * time.Millisecond)
	b.Notify()
	waitWaiters(t, fc)
	fc.Step(90 * time.Millisecond)
	expectCalls(t, calls, 0)
	fc.Step(10 * time.Millisecond)
	expectCalls(t, calls, 1)

	// A steady stream of changes every 50ms: its first at once (quiet for
	// the hold-off since fn last returned), then the max delay forces a run.
	fc.Step(100 * time.Millisecond)
	b.Notify()
	expectCalls(t, calls, 1)
	fc.Step(50 * time.Millisecond)
	start := fc.Now()
	b.Notify()
	waitWaiters(t, fc)
	var ran time.Time
	for i := 0; i < 10 && ran.IsZero(); i++ {
		fc.Step(50 * time.Millisecond)
		select {
		case ran = <-calls:
		case <-time.After(50 * time.Millisecond):
			b.Notify()
			waitWaiters(t, fc)
		}
	}
	if ran.IsZero() {
		t.Fatal("a steady stream of changes postponed fn for ever")
	}
	if d := ran.Sub(start); d > 300*time.Millisecond {
		t.Errorf("fn ran %s after the first change, want <= max delay 300ms", d)
	}

	// After a quiet spell of the hold-off, a change goes at once again.
	fc.Step(100 * time.Millisecond)
	b.Notify()
	expectCalls(t, calls, 1)
}

// TestBatcherCoalesces: a burst costs two runs, its first change and the
// rest together, however many changes it has.
func TestBatcherCoalesces(t *testing.T) {
	fc := clocktesting.NewFakeClock(time.Unix(0, 0))
	b := NewBatcher(100*time.Millisecond, time.Second, fc)
	calls := make(chan time.Time, 10)
	ran := make(chan struct{}, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.Run(ctx, func(context.Context, time.Time) { calls <- fc.Now(); ran <- struct{}{} })
	b.Notify()
	<-ran
	for range 50 {
		b.Notify()
		fc.Step(time.Millisecond)
	}
	waitWaiters(t, fc)
	expectCalls(t, calls, 1)
	fc.Step(100 * time.Millisecond)
	expectCalls(t, calls, 1)
}

// TestBatcherAfterLongRun: a change that came while fn ran (a rebuild
// longer than the hold-off) is batched, not handed on at once: the quiet
// spell counts from fn's return.
func TestBatcherAfterLongRun(t *testing.T) {
	fc := clocktesting.NewFakeClock(time.Unix(0, 0))
	b := NewBatcher(100*time.Millisecond, time.Second, fc)
	calls := make(chan time.Time, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := true
	go b.Run(ctx, func(context.Context, time.Time) {
		if first { // a long rebuild, a change arriving during it
			first = false
			fc.Step(500 * time.Millisecond)
			b.Notify()
		}
		calls <- fc.Now()
	})
	b.Notify()
	expectCalls(t, calls, 1)
	waitWaiters(t, fc) // the change that came during fn waits for the hold-off
	expectCalls(t, calls, 0)
	fc.Step(100 * time.Millisecond)
	expectCalls(t, calls, 1)
}

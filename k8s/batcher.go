// Package k8s watches Kubernetes (Services, EndpointSlices, Pods,
// Namespaces) with client-go informers and hands the current state to the
// next stage in batches: a change after a quiet spell is handed on at once;
// one that follows another within the hold-off starts a hold-off timer,
// further changes restart it, and a maximum delay bounds how long a stream
// of changes can postpone a rebuild. Nothing is handed on before the
// informers have synced.
//
// Where it sits in the pipeline: first. It feeds model building; it knows
// nothing about Envoy.
package k8s

import (
	"context"
	"time"

	"k8s.io/utils/clock"
)

// Batcher coalesces change notifications. Notify is safe for concurrent use;
// Run calls fn from one goroutine only.
type Batcher struct {
	holdOff, maxDelay time.Duration
	clock             clock.WithTicker
	notify            chan struct{}
}

// NewBatcher returns a batcher; clk nil means the real clock.
func NewBatcher(holdOff, maxDelay time.Duration, clk clock.WithTicker) *Batcher {
	if clk == nil {
		clk = clock.RealClock{}
	}
	if maxDelay < holdOff {
		maxDelay = holdOff
	}
	return &Batcher{holdOff: holdOff, maxDelay: maxDelay, clock: clk, notify: make(chan struct{}, 1)}
}

// Notify records that something changed.
func (b *Batcher) Notify() {
	select {
	case b.notify <- struct{}{}:
	default: // one pending notification is enough
	}
}

// Run calls fn once per batch until ctx ends. A change that comes after
// a quiet spell (no change noticed and no fn returning for the hold-off)
// is a batch of its own, handed on at once: an isolated change, such as a
// pod turning unready, is not delayed. A change within the hold-off of the
// one before or of fn's return (it may have come while fn ran, which takes
// long in a big mesh: counting it quiet would rebuild back to back) starts
// a batch that ends HoldOff after its last change, or MaxDelay after its first,
// whichever comes first: a burst costs two rebuilds (its first change,
// then the rest together), a steady stream one per MaxDelay. This is
// kube-proxy's bounded-frequency runner's shape: at once when idle,
// batched when busy. fn gets the time the batch's first change was
// noticed (the start of the convergence meshd measures).
func (b *Batcher) Run(ctx context.Context, fn func(ctx context.Context, first time.Time)) {
	var last time.Time // when the last change was noticed or fn returned
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.notify:
		}
		first := b.clock.Now()
		quietSpell := last.IsZero() || first.Sub(last) >= b.holdOff
		last = first
		if quietSpell {
			fn(ctx, first)
			last = b.clock.Now()
			continue
		}
		deadline := first.Add(b.maxDelay)
		quiet := b.clock.NewTimer(b.holdOff)
	batch:
		for {
			select {
			case <-ctx.Done():
				quiet.Stop()
				return
			case <-b.notify:
				quiet.Stop()
				last = b.clock.Now()
				wait := min(b.holdOff, deadline.Sub(last))
				if wait <= 0 {
					break batch
				}
				quiet = b.clock.NewTimer(wait)
			case <-quiet.C():
				break batch
			}
		}
		fn(ctx, first)
		last = b.clock.Now()
	}
}

package ca

import (
	"container/heap"
	"context"
	crand "crypto/rand"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// RenewerConfig configures a Renewer.
type RenewerConfig struct {
	Issuer Issuer
	// KeyType of the fresh key generated for every certificate.
	KeyType KeyType
	// RenewAt is the fraction of the lifetime after which a certificate is
	// renewed (default 0.5); Jitter spreads it by ±Jitter of itself (default 0.1).
	RenewAt, Jitter float64
	// MinBackoff and MaxBackoff bound retries after a failed issuance
	// (defaults 1s and 5m, doubling).
	MinBackoff, MaxBackoff time.Duration
	// Clock, Rand (for keys) and Random (for the jitter, in [0,1)) are
	// injected (defaults: the wall clock, crypto/rand, math/rand/v2).
	Clock  clock.WithTicker
	Rand   io.Reader
	Random func() float64
	Logger *slog.Logger
	// OnError (optional) hears every failed issuance after it is logged
	// (meshd puts an Event on the pod); the current certificate stays.
	OnError func(key string, req Request, err error)
}

// Renewer keeps certificates fresh: for each watched key it issues at once,
// hands over every new certificate, renews at RenewAt of the lifetime (with
// jitter), retries with backoff, and re-issues everything on Reissue (after a
// root change). Safe for concurrent use.
//
// A watch waiting for its renewal is an entry in a queue that one goroutine
// serves (with one timer, for the earliest); a goroutine exists per
// issuance in flight only. A goroutine and a timer per watch cost ~8 KB per
// pod for the months a certificate mostly waits.
type Renewer struct {
	cfg RenewerConfig

	mu    sync.Mutex
	queue dueQueue // waiting watches, earliest first
	live  int      // watches whose context has not ended
	gen   uint64   // Reissue's count
	// wake nudges the scheduler (the queue's head or live changed); nil
	// while no scheduler runs (no live watch).
	wake chan struct{}
}

// watch is one watched certificate.
type watch struct {
	ctx    context.Context
	key    string
	req    Request
	onCert func(*Certificate)
	// backoff is used by the issuing goroutine alone (one at a time).
	backoff time.Duration
	// Under Renewer.mu: when it is due, its place in the queue (-1: not
	// queued: issuing or ended), the Reissue count its issuance started
	// under, and whether its context ended.
	at    time.Time
	index int
	gen   uint64
	ended bool
}

// NewRenewer returns a Renewer.
func NewRenewer(cfg RenewerConfig) (*Renewer, error) {
	if cfg.Issuer == nil {
		return nil, errors.New("ca: renewer needs an issuer")
	}
	if cfg.RenewAt == 0 {
		cfg.RenewAt = 0.5
	}
	if cfg.Jitter == 0 {
		cfg.Jitter = 0.1
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 5 * time.Minute
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Rand == nil {
		cfg.Rand = crand.Reader
	}
	if cfg.Random == nil {
		cfg.Random = rand.Float64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Renewer{cfg: cfg}, nil
}

// Reissue makes every watched certificate be issued again now (the bundle
// changed), and those being issued again once they are. Subscribers get the
// new bundle with the new certificate.
func (r *Renewer) Reissue() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	now := r.cfg.Clock.Now()
	for _, w := range r.queue {
		w.at = now
	}
	heap.Init(&r.queue)
	r.nudgeLocked()
}

// Watch starts keeping a certificate for req (a fresh key each time) until
// ctx ends; onCert is never called concurrently for one watch. It returns
// at once.
func (r *Renewer) Watch(ctx context.Context, key string, req Request, onCert func(*Certificate)) {
	w := &watch{ctx: ctx, key: key, req: req, onCert: onCert, backoff: r.cfg.MinBackoff, index: -1}
	r.mu.Lock()
	r.live++
	if r.wake == nil {
		r.wake = make(chan struct{}, 1)
		go r.schedule(r.wake)
	}
	w.gen = r.gen
	r.mu.Unlock()
	context.AfterFunc(ctx, func() { r.end(w) })
	go r.issue(w)
}

// end drops a watch whose context ended.
func (r *Renewer) end(w *watch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w.ended = true
	if w.index >= 0 {
		heap.Remove(&r.queue, w.index)
	}
	r.live--
	r.nudgeLocked()
}

func (r *Renewer) nudgeLocked() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// schedule starts the issuance of each watch when it is due, until no watch
// is live.
func (r *Renewer) schedule(wake chan struct{}) {
	for {
		r.mu.Lock()
		if r.live == 0 {
			r.wake = nil
			r.mu.Unlock()
			return
		}
		now := r.cfg.Clock.Now()
		var due []*watch
		for len(r.queue) > 0 && !r.queue[0].at.After(now) {
			w := heap.Pop(&r.queue).(*watch)
			w.gen = r.gen
			due = append(due, w)
		}
		var wait time.Duration
		if len(r.queue) > 0 {
			wait = r.queue[0].at.Sub(now)
		}
		r.mu.Unlock()
		for _, w := range due {
			if late := now.Sub(w.at); late > lateRenewal {
				// The timer fired late: the process (or its node) was held
				// up; certificates near their end may expire in use.
				r.cfg.Logger.Warn("ca: a renewal started late", "proxy", w.key, "identity", w.req.Identity.String(), "late", late.Round(time.Millisecond))
			}
			go r.issue(w)
		}
		if wait == 0 {
			<-wake
			continue
		}
		t := r.cfg.Clock.NewTimer(wait)
		select {
		case <-wake:
		case <-t.C():
		}
		t.Stop()
	}
}

// issue issues one certificate for w and queues it for the next.
func (r *Renewer) issue(w *watch) {
	wait, err := r.once(w.ctx, w.req, w.onCert)
	if err != nil {
		if w.ctx.Err() != nil {
			return
		}
		r.cfg.Logger.Warn("ca: issuance failed; retrying", "proxy", w.key, "identity", w.req.Identity.String(), "retry_in", w.backoff, "error", err)
		if r.cfg.OnError != nil {
			r.cfg.OnError(w.key, w.req, err)
		}
		wait = w.backoff
		w.backoff = min(2*w.backoff, r.cfg.MaxBackoff)
	} else {
		w.backoff = r.cfg.MinBackoff
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if w.ended {
		return
	}
	if w.gen != r.gen {
		wait = 0 // the bundle changed while it was issued
	}
	w.at = r.cfg.Clock.Now().Add(wait)
	heap.Push(&r.queue, w)
	if w.index == 0 {
		r.nudgeLocked()
	}
}

// lateRenewal is how far past its due time a renewal may start before it
// is logged (the scheduler's timer fires within milliseconds).
const lateRenewal = 5 * time.Second

// dueQueue is a min-heap of watches by due time.
type dueQueue []*watch

func (q dueQueue) Len() int           { return len(q) }
func (q dueQueue) Less(i, j int) bool { return q[i].at.Before(q[j].at) }
func (q dueQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *dueQueue) Push(x any) {
	w := x.(*watch)
	w.index = len(*q)
	*q = append(*q, w)
}
func (q *dueQueue) Pop() any {
	old := *q
	w := old[len(old)-1]
	old[len(old)-1] = nil
	w.index = -1
	*q = old[:len(old)-1]
	return w
}

// once issues one certificate and returns how long to wait until renewal.
func (r *Renewer) once(ctx context.Context, req Request, onCert func(*Certificate)) (time.Duration, error) {
	k, err := GenerateKey(r.cfg.Rand, r.cfg.KeyType)
	if err != nil {
		return 0, err
	}
	req.Key = k
	asked := r.cfg.Clock.Now()
	c, err := r.cfg.Issuer.Issue(ctx, req)
	if err != nil {
		return 0, err
	}
	onCert(c)
	// The lifetime counts from issuance, not from a NotBefore that issuers
	// backdate for clock skew: with a short lifetime, a backdated start
	// would put the renewal at once, and renew in a loop.
	start := c.Leaf.NotBefore
	if asked.After(start) {
		start = asked
	}
	return RenewDelay(start, c.Leaf.NotAfter, r.cfg.Clock.Now(), r.cfg.RenewAt, r.cfg.Jitter, r.cfg.Random()), nil
}

// RenewDelay is how long from now to wait before renewing a certificate
// valid from notBefore to notAfter: at fraction*(1±jitter) of its lifetime,
// u in [0,1) choosing where in the jitter band.
func RenewDelay(notBefore, notAfter, now time.Time, fraction, jitter, u float64) time.Duration {
	life := notAfter.Sub(notBefore)
	f := fraction * (1 + jitter*(2*u-1))
	at := notBefore.Add(time.Duration(float64(life) * f))
	return max(at.Sub(now), 0)
}

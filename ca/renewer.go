package ca

import (
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
type Renewer struct {
	cfg  RenewerConfig
	mu   sync.Mutex
	kick chan struct{} // closed and replaced by Reissue
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
	return &Renewer{cfg: cfg, kick: make(chan struct{})}, nil
}

// Reissue makes every watched certificate be issued again now (the bundle
// changed). Subscribers get the new bundle with the new certificate.
func (r *Renewer) Reissue() {
	r.mu.Lock()
	defer r.mu.Unlock()
	close(r.kick)
	r.kick = make(chan struct{})
}

func (r *Renewer) kicked() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.kick
}

// Watch starts keeping a certificate for req (a fresh key each time) until
// ctx ends; onCert is called from one goroutine per watch. It returns at once.
func (r *Renewer) Watch(ctx context.Context, key string, req Request, onCert func(*Certificate)) {
	go r.loop(ctx, key, req, onCert)
}

func (r *Renewer) loop(ctx context.Context, key string, req Request, onCert func(*Certificate)) {
	backoff := r.cfg.MinBackoff
	for {
		kick := r.kicked()
		wait, err := r.once(ctx, req, onCert)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.cfg.Logger.Warn("ca: issuance failed; retrying", "proxy", key, "identity", req.Identity.String(), "retry_in", backoff, "error", err)
			if r.cfg.OnError != nil {
				r.cfg.OnError(key, req, err)
			}
			wait = backoff
			backoff = min(2*backoff, r.cfg.MaxBackoff)
		} else {
			backoff = r.cfg.MinBackoff
		}
		t := r.cfg.Clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-kick:
			t.Stop()
		case <-t.C():
		}
	}
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

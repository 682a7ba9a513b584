package rootca

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/store"
)

// Signer is the CA whose authority a Follower keeps current (ca.Internal).
type Signer interface {
	Authority() *ca.Authority
	SetAuthority(*ca.Authority)
}

// FollowConfig configures a Follower.
type FollowConfig struct {
	Store       store.Store
	Name        string
	TrustDomain string
	Signer      Signer
	// Rand makes a new root's key when a rotation starts.
	Rand io.Reader
	// LeafTTL is the longest lifetime of a leaf the CA signs: the old root
	// stays trusted that long after the new one starts signing.
	LeafTTL time.Duration
	// Grace is how long each rotation phase lasts at least.
	Grace time.Duration
	// Every is how often the record is read (and a rotation stepped).
	Every time.Duration
	// IsLeader reports whether this replica may step the rotation (nil:
	// always).
	IsLeader func() bool
	// Reissue re-issues every certificate and pushes the new bundle; it is
	// called after the signer's authority changed.
	Reissue func()
	// Healthy, if set, is told after each round whether the record read as
	// valid CA material (after the signer and the certificates followed it).
	Healthy func(bool)
	Clock   clock.WithTicker // default: the real clock
	Logger  *slog.Logger
}

// Follower keeps a signer on the store's current CA material: it steps a
// root rotation when one is due (only on the leader; optimistic concurrency
// on the store keeps concurrent replicas safe anyway) and, when the signing
// certificate or the bundle changed, swaps the signer's authority and
// re-issues every certificate: bundle first, then leaves, then the old root
// goes. Every replica follows.
type Follower struct {
	cfg   FollowConfig
	rot   *Rotator
	phase atomic.Pointer[[2]string]
}

// NewFollower checks cfg and fills in its defaults.
func NewFollower(cfg FollowConfig) (*Follower, error) {
	if cfg.Signer == nil || cfg.Reissue == nil || cfg.Every <= 0 {
		return nil, errors.New("ca: root follower needs Signer, Reissue and a positive Every")
	}
	rot, err := NewRotator(RotationConfig{Store: cfg.Store, Name: cfg.Name, TrustDomain: cfg.TrustDomain,
		Rand: cfg.Rand, LeafTTL: cfg.LeafTTL, Grace: cfg.Grace})
	if err != nil {
		return nil, err
	}
	if cfg.IsLeader == nil {
		cfg.IsLeader = func() bool { return true }
	}
	if cfg.Healthy == nil {
		cfg.Healthy = func(bool) {}
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Follower{cfg: cfg, rot: rot}, nil
}

// Phase returns the rotation phase and since when, as last read from the
// record ("" before the first read, or without a rotation on record).
func (f *Follower) Phase() (phase, since string) {
	if p := f.phase.Load(); p != nil {
		return p[0], p[1]
	}
	return "", ""
}

// Start follows the record every cfg.Every until ctx ends.
func (f *Follower) Start(ctx context.Context) error {
	t := f.cfg.Clock.NewTicker(f.cfg.Every)
	defer t.Stop()
	f.cfg.Healthy(true)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
		f.step(ctx)
	}
}

// step is one round: the rotation step (leader), then the record followed.
func (f *Follower) step(ctx context.Context) {
	log := f.cfg.Logger
	if f.cfg.IsLeader() {
		if phase, changed, err := f.rot.Step(ctx, f.cfg.Clock.Now()); err != nil {
			log.Warn("ca: root rotation step", "error", err)
		} else if changed {
			log.Info("ca: root rotation advanced", "phase", string(phase))
		}
	}
	if s, err := f.cfg.Store.Get(ctx, f.cfg.Name); err == nil {
		f.phase.Store(&[2]string{string(s.Data[KeyPhase]), string(s.Data[KeyPhaseSince])})
	}
	a, err := Load(ctx, f.cfg.Store, f.cfg.Name, f.cfg.Clock.Now())
	if err != nil {
		f.cfg.Healthy(false)
		log.Error("ca: CA secret unreadable; keeping the current CA", "error", err)
		return
	}
	// Told at the end of the round, once the authority and the
	// certificates follow the record.
	defer f.cfg.Healthy(true)
	cur := f.cfg.Signer.Authority()
	if a.Cert.Equal(cur.Cert) && string(a.BundlePEM) == string(cur.BundlePEM) {
		return
	}
	f.cfg.Signer.SetAuthority(a)
	f.cfg.Reissue()
	log.Info("ca: CA material changed; re-issuing all certificates", "roots", len(a.Roots), "signing_serial", a.Cert.SerialNumber.Text(16))
}

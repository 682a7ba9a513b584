package rootca

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/store"
)

// RotationConfig configures a Rotator.
type RotationConfig struct {
	Store       store.Store
	Name        string
	TrustDomain string
	// Grace is how long each phase lasts at least: the new bundle reaching
	// every proxy, and then every leaf being renewed (default 10m).
	Grace time.Duration
	// LeafTTL is the longest leaf lifetime (default 24h): the old root is
	// dropped only after LeafTTL+Grace under the new root.
	LeafTTL time.Duration
	// AutoBefore starts a rotation when the root expires within this
	// (default 30 days).
	AutoBefore time.Duration
	// Rand makes the new root's key.
	Rand io.Reader
}

// Rotator drives root rotation one idempotent step at a time; run Step
// periodically on the leader only. After a step that changed the phase, the
// caller reloads the Authority (Load), gives it to the issuer and re-issues
// every certificate, so proxies get the bundle first, then leaves.
type Rotator struct{ cfg RotationConfig }

// NewRotator returns a Rotator.
func NewRotator(cfg RotationConfig) (*Rotator, error) {
	if cfg.Store == nil || cfg.Name == "" || cfg.Rand == nil {
		return nil, errors.New("ca: rotator needs Store, Name and Rand")
	}
	if cfg.Grace == 0 {
		cfg.Grace = 10 * time.Minute
	}
	if cfg.LeafTTL == 0 {
		cfg.LeafTTL = 24 * time.Hour
	}
	if cfg.AutoBefore == 0 {
		cfg.AutoBefore = 30 * 24 * time.Hour
	}
	return &Rotator{cfg: cfg}, nil
}

// Step advances the rotation if its time has come and reports the phase
// after the step and whether it changed. A conflicting write by another
// replica is returned as an error and changes nothing.
func (r *Rotator) Step(ctx context.Context, now time.Time) (Phase, bool, error) {
	cur, err := r.cfg.Store.Get(ctx, r.cfg.Name)
	if err != nil {
		return "", false, fmt.Errorf("ca: rotation: %w", err)
	}
	phase, since := PhaseOf(cur)
	next := cur.Clone()
	switch {
	case phase == PhaseSteady && r.wanted(cur, now):
		if err := r.prepare(next, now); err != nil {
			return phase, false, err
		}
	case phase == PhaseBundle && now.Sub(since) >= r.cfg.Grace:
		setPhase(next, PhaseSigning, now)
	case phase == PhaseSigning && now.Sub(since) >= r.cfg.LeafTTL+r.cfg.Grace:
		promote(next)
	default:
		return phase, false, nil
	}
	if _, err := FromData(next.Data, now); err != nil {
		return phase, false, fmt.Errorf("ca: rotation would leave invalid CA material: %w", err)
	}
	if _, err := r.cfg.Store.Update(ctx, next); err != nil {
		return phase, false, fmt.Errorf("ca: rotation: %w", err)
	}
	p, _ := PhaseOf(next)
	return p, true, nil
}

// PhaseOf returns where the rotation kept in a CA record stands and since
// when (zero if unknown).
func PhaseOf(r *store.Record) (Phase, time.Time) {
	since, _ := time.Parse(time.RFC3339, string(r.Data[KeyPhaseSince]))
	return Phase(r.Data[KeyPhase]), since
}

// RotationRequested reports whether the record asks for a root rotation.
func RotationRequested(r *store.Record) bool { return r.Annotations[AnnotationRotate] == "true" }

// RequestRotation marks a record so that the leader rotates the root at
// its next step; the caller writes it back.
func RequestRotation(r *store.Record) {
	if r.Annotations == nil {
		r.Annotations = map[string]string{}
	}
	r.Annotations[AnnotationRotate] = "true"
}

// wanted: asked for by annotation, or the root expires soon.
func (r *Rotator) wanted(rec *store.Record, now time.Time) bool {
	if RotationRequested(rec) {
		return true
	}
	roots, err := ca.ParseCertsPEM(rec.Data[KeyRootCert])
	return err == nil && roots[0].NotAfter.Sub(now) < r.cfg.AutoBefore
}

func (r *Rotator) prepare(rec *store.Record, now time.Time) error {
	if _, plugin := rec.Data[KeyCACert]; plugin {
		return errors.New("ca: rotation: a plug-in CA is rotated by its operator, not by meshd")
	}
	root, err := ca.NewRoot(r.cfg.Rand, now, r.cfg.TrustDomain)
	if err != nil {
		return err
	}
	key, err := ca.EncodeKey(root.Key)
	if err != nil {
		return err
	}
	rec.Data[KeyNextRootCert], rec.Data[KeyNextCAKey] = root.BundlePEM, key
	delete(rec.Annotations, AnnotationRotate)
	setPhase(rec, PhaseBundle, now)
	return nil
}

func setPhase(rec *store.Record, p Phase, now time.Time) {
	rec.Data[KeyPhase] = []byte(p)
	rec.Data[KeyPhaseSince] = []byte(now.UTC().Format(time.RFC3339))
}

// promote makes the new root the only one.
func promote(rec *store.Record) {
	rec.Data[KeyRootCert], rec.Data[KeyCAKey] = rec.Data[KeyNextRootCert], rec.Data[KeyNextCAKey]
	for _, k := range []string{KeyNextRootCert, KeyNextCAKey, KeyPhase, KeyPhaseSince} {
		delete(rec.Data, k)
	}
}

package ca

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Root rotation state, kept in the CA Secret so that a restarted replica or a
// new leader resumes where the last one stopped.
const (
	KeyNextRootCert = "next-root-cert.pem"
	KeyNextCAKey    = "next-ca-key.pem"
	KeyPhase        = "rotation-phase"
	KeyPhaseSince   = "rotation-since"
	// AnnotationRotate on the CA Secret asks for a root rotation.
	AnnotationRotate = "meshd.io/rotate-root"
)

// Phase is where a root rotation stands.
type Phase string

const (
	// PhaseSteady: one root, it signs.
	PhaseSteady Phase = ""
	// PhaseBundle: the bundle holds old and new roots; the old one still
	// signs, while the new bundle reaches every proxy.
	PhaseBundle Phase = "bundle"
	// PhaseSigning: the new root signs and every leaf is re-issued under it;
	// the bundle still holds both.
	PhaseSigning Phase = "signing"
)

// SecretUpdater is SecretClient plus Update (optimistic concurrency by
// resourceVersion).
type SecretUpdater interface {
	SecretClient
	Update(ctx context.Context, s *corev1.Secret, opts metav1.UpdateOptions) (*corev1.Secret, error)
}

// RotationConfig configures a Rotator.
type RotationConfig struct {
	Secrets     SecretUpdater
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
	Rand       io.Reader
}

// Rotator drives root rotation one idempotent step at a time; run Step
// periodically on the leader only. After a step that changed the phase, the
// caller reloads the Authority (LoadRoot), gives it to the issuer and
// re-issues every certificate, so proxies get the bundle first, then leaves.
type Rotator struct{ cfg RotationConfig }

// NewRotator returns a Rotator.
func NewRotator(cfg RotationConfig) (*Rotator, error) {
	if cfg.Secrets == nil || cfg.Name == "" || cfg.Rand == nil {
		return nil, errors.New("ca: rotator needs Secrets, Name and Rand")
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
	s, err := r.cfg.Secrets.Get(ctx, r.cfg.Name, metav1.GetOptions{})
	if err != nil {
		return "", false, fmt.Errorf("ca: rotation: %w", err)
	}
	phase := Phase(s.Data[KeyPhase])
	since, _ := time.Parse(time.RFC3339, string(s.Data[KeyPhaseSince]))
	next := s.DeepCopy()
	switch {
	case phase == PhaseSteady && r.wanted(s, now):
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
	if _, err := AuthorityFromPEM(next.Data, now); err != nil {
		return phase, false, fmt.Errorf("ca: rotation would leave invalid CA material: %w", err)
	}
	if _, err := r.cfg.Secrets.Update(ctx, next, metav1.UpdateOptions{}); err != nil {
		return phase, false, fmt.Errorf("ca: rotation: %w", err)
	}
	return Phase(next.Data[KeyPhase]), true, nil
}

// wanted: asked for by annotation, or the root expires soon.
func (r *Rotator) wanted(s *corev1.Secret, now time.Time) bool {
	if s.Annotations[AnnotationRotate] == "true" {
		return true
	}
	roots, err := ParseCertsPEM(s.Data[KeyRootCert])
	return err == nil && roots[0].NotAfter.Sub(now) < r.cfg.AutoBefore
}

func (r *Rotator) prepare(s *corev1.Secret, now time.Time) error {
	if _, plugin := s.Data[KeyCACert]; plugin {
		return errors.New("ca: rotation: a plug-in CA is rotated by its operator, not by meshd")
	}
	root, err := NewRoot(r.cfg.Rand, now, r.cfg.TrustDomain)
	if err != nil {
		return err
	}
	key, err := encodeKey(root.Key)
	if err != nil {
		return err
	}
	s.Data[KeyNextRootCert], s.Data[KeyNextCAKey] = root.BundlePEM, key
	delete(s.Annotations, AnnotationRotate)
	setPhase(s, PhaseBundle, now)
	return nil
}

func setPhase(s *corev1.Secret, p Phase, now time.Time) {
	s.Data[KeyPhase] = []byte(p)
	s.Data[KeyPhaseSince] = []byte(now.UTC().Format(time.RFC3339))
}

// promote makes the new root the only one.
func promote(s *corev1.Secret) {
	s.Data[KeyRootCert], s.Data[KeyCAKey] = s.Data[KeyNextRootCert], s.Data[KeyNextCAKey]
	for _, k := range []string{KeyNextRootCert, KeyNextCAKey, KeyPhase, KeyPhaseSince} {
		delete(s.Data, k)
	}
}

package main

import (
	"context"
	"crypto/rand"
	"log/slog"
	"time"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/config"
)

// followRoot keeps the issuer on the CA Secret's current material: it steps
// a root rotation when one is due (optimistic concurrency makes concurrent
// replicas safe; leader election comes with the HA work) and, when the
// signing certificate or the bundle changed, swaps the authority and
// re-issues every certificate: bundle first, then leaves, then the old root
// goes. Cluster mode only (file CAs do not rotate).
func followRoot(ctx context.Context, cfg config.Config, secrets ca.SecretUpdater, issuer *ca.Internal, renewer *ca.Renewer, every time.Duration, log *slog.Logger) error {
	rot, err := ca.NewRotator(ca.RotationConfig{Secrets: secrets, Name: cfg.CASecret, TrustDomain: cfg.TrustDomain,
		Rand: rand.Reader, LeafTTL: cfg.CertTTL})
	if err != nil {
		return err
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if phase, changed, err := rot.Step(ctx, time.Now()); err != nil {
			log.Warn("ca: root rotation step", "error", err)
		} else if changed {
			log.Info("ca: root rotation advanced", "phase", string(phase))
		}
		a, err := ca.LoadRoot(ctx, secrets, cfg.CASecret, time.Now())
		if err != nil {
			log.Error("ca: CA secret unreadable; keeping the current CA", "error", err)
			continue
		}
		cur := issuer.Authority()
		if a.Cert.Equal(cur.Cert) && string(a.BundlePEM) == string(cur.BundlePEM) {
			continue
		}
		issuer.SetAuthority(a)
		renewer.Reissue()
		log.Info("ca: CA material changed; re-issuing all certificates", "roots", len(a.Roots), "signing_serial", a.Cert.SerialNumber.Text(16))
	}
}

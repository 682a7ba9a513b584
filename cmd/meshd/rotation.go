package main

import (
	"context"
	"crypto/rand"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/ca/store"
	"github.com/meshd/meshd/internal/config"
)

// followRoot keeps the issuer on the CA Secret's current material: it steps
// a root rotation when one is due (optimistic concurrency makes concurrent
// replicas safe; leader election comes with the HA work) and, when the
// signing certificate or the bundle changed, swaps the authority and
// re-issues every certificate: bundle first, then leaves, then the old root
// goes. The CA may be a Secret or files (--ca-dir).
//
// Every replica follows; only the leader (isLeader) steps the rotation.
// leafTTL is the longest lifetime of a leaf the CA signs: the old root
// stays trusted that long after the new one starts signing. reissue
// re-issues every certificate and pushes the new bundle.
func followRoot(ctx context.Context, cfg config.Config, leafTTL time.Duration, secrets store.Store, issuer *ca.Internal, reissue func(), every time.Duration,
	isLeader func() bool, phase *atomic.Pointer[[2]string], caHealthy prometheus.Gauge, log *slog.Logger) error {
	rot, err := rootca.NewRotator(rootca.RotationConfig{Store: secrets, Name: cfg.CASecret, TrustDomain: cfg.TrustDomain,
		Rand: rand.Reader, LeafTTL: leafTTL, Grace: cfg.RootRotationGrace})
	if err != nil {
		return err
	}
	t := time.NewTicker(every)
	defer t.Stop()
	caHealthy.Set(1)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if isLeader() {
			if phase, changed, err := rot.Step(ctx, time.Now()); err != nil {
				log.Warn("ca: root rotation step", "error", err)
			} else if changed {
				log.Info("ca: root rotation advanced", "phase", string(phase))
			}
		}
		if s, err := secrets.Get(ctx, cfg.CASecret); err == nil && phase != nil {
			phase.Store(&[2]string{string(s.Data[rootca.KeyPhase]), string(s.Data[rootca.KeyPhaseSince])})
		}
		a, err := rootca.Load(ctx, secrets, cfg.CASecret, time.Now())
		if err != nil {
			caHealthy.Set(0)
			log.Error("ca: CA secret unreadable; keeping the current CA", "error", err)
			continue
		}
		caHealthy.Set(1)
		cur := issuer.Authority()
		if a.Cert.Equal(cur.Cert) && string(a.BundlePEM) == string(cur.BundlePEM) {
			continue
		}
		issuer.SetAuthority(a)
		reissue()
		log.Info("ca: CA material changed; re-issuing all certificates", "roots", len(a.Roots), "signing_serial", a.Cert.SerialNumber.Text(16))
	}
}

package main

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/internal/config"
	"github.com/meshd/meshd/internal/inject"
	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/model"
	"github.com/meshd/meshd/xds"
)

// watchStage is the Kubernetes watcher and what it hands on besides the
// model: the pods (for the injector's Secret writer) and whether a mesh
// config has been published yet.
type watchStage struct {
	watcher   *k8s.Watcher
	pods      *inject.Pods
	published *atomic.Bool
}

// newWatch builds the watcher: informers (or the local dir) -> batched
// state -> model (bad objects reported as Events) -> mesh: translated and
// published to every proxy.
func newWatch(cfg config.Config, kube *kubeStage, mesh *xds.Mesh, reg prometheus.Registerer, log *slog.Logger) (*watchStage, error) {
	w := &watchStage{pods: inject.NewPods(), published: &atomic.Bool{}}
	updates := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshd_config_updates_total",
		Help: "Kubernetes states turned into mesh configuration, by result: published, or failed (conversion, translation or publishing failed; the configuration published before stays, meshd's log says why)."},
		[]string{"result"})
	if err := reg.Register(updates); err != nil {
		return nil, err
	}
	wcfg := k8s.Config{Client: kube.client, Dynamic: kube.dyn, PoliciesServed: kube.policiesServed, HoldOff: cfg.HoldOff, MaxDelay: cfg.MaxDelay,
		Logger: log, OnState: w.onState(cfg, kube, mesh, updates, log)}
	if kube.local != nil {
		wcfg.Source = kube.local
	}
	var err error
	if w.watcher, err = k8s.New(wcfg); err != nil {
		return nil, err
	}
	return w, nil
}

// onState converts a state, reports its problems and publishes the model.
func (w *watchStage) onState(cfg config.Config, kube *kubeStage, mesh *xds.Mesh, updates *prometheus.CounterVec, log *slog.Logger) func(context.Context, *k8s.State) {
	newConverter := func() *k8s.Converter {
		c := k8s.NewConverter(cfg.TrustDomain)
		c.RootNamespace = cfg.PolicyRoot()
		return c
	}
	conv := newConverter() // converts what changed; OnState is called from one goroutine
	published, failed := updates.WithLabelValues("published"), updates.WithLabelValues("failed")
	return func(ctx context.Context, st *k8s.State) {
		w.pods.Set(st.Pods)
		snap, probs, err := convertSafely(conv, st)
		if err != nil {
			// The model published before stays; the next change converts
			// everything afresh.
			conv = newConverter()
			log.Error("k8s: state not converted", "error", err)
			failed.Inc()
			return
		}
		// A connection made just before a renewal (at about two thirds of
		// a certificate's life) still ends before that certificate.
		snap.ConnectionMaxAge = cfg.CertTTL / 3
		snap.DetectionTimeout = cfg.DetectionTimeout
		if kube.policyStatus != nil {
			kube.policyStatus.Update(st.Policies, snap, probs)
		}
		// Translation finds its own (two services on one address):
		// reported with conversion's, as Events on the objects.
		tprobs, err := mesh.Update(ctx, snap)
		kube.problems.Report(append(probs, tprobs...))
		if err != nil {
			log.Error("xds: publish mesh config", "error", err)
			failed.Inc()
			return
		}
		published.Inc()
		w.published.Store(true)
		log.Info("xds: mesh config published", "services", snap.Services.Len(), "workloads", len(snap.Workloads), "skipped", len(probs))
	}
}

// convertSafely is conv.Convert(st), with a panic (a meshd bug met on some
// object: every object should convert or be reported as a problem) turned
// into an error with its stack: the control plane keeps serving the
// configuration it has, and renewing certificates, instead of crash-looping
// for as long as that object exists.
func convertSafely(conv *k8s.Converter, st *k8s.State) (snap *model.Snapshot, probs []k8s.Problem, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("conversion failed, the configuration published before is kept (a meshd bug: please report it with this stack): %v\n%s", r, debug.Stack())
		}
	}()
	snap, probs = conv.Convert(st)
	return snap, probs, nil
}

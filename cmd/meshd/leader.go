package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// leaseName is the Lease (in meshd's namespace) the replicas compete for.
const leaseName = "meshd-leader"

// singletons runs work that one replica at a time must do (root rotation
// steps, credentials Secrets reconcile and garbage collection, the webhook's
// caBundle) under a Kubernetes Lease. The leader runs every job with a
// context that ends the moment leadership is lost; a replica that loses the
// Lease stops them at once and competes again. Without a cluster (client
// nil) this replica is always the leader.
type singletons struct {
	client    kubernetes.Interface
	namespace string
	identity  string
	lease     time.Duration
	leader    atomic.Bool
	gauge     prometheus.Gauge
	log       *slog.Logger
	jobs      []func(ctx context.Context) error
}

func newSingletons(client kubernetes.Interface, namespace string, lease time.Duration, reg prometheus.Registerer, log *slog.Logger) *singletons {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	s := &singletons{client: client, namespace: namespace, identity: host + "-" + hex.EncodeToString(b), lease: lease, log: log,
		gauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meshd_leader", Help: "1 while this replica holds the singleton Lease."})}
	reg.MustRegister(s.gauge)
	return s
}

// IsLeader reports whether this replica holds the Lease now.
func (s *singletons) IsLeader() bool { return s.leader.Load() }

// Add registers a job; call before Run.
func (s *singletons) Add(job func(ctx context.Context) error) { s.jobs = append(s.jobs, job) }

// Run competes for the Lease until ctx ends.
func (s *singletons) Run(ctx context.Context) error {
	if s.client == nil {
		return s.lead(ctx)
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: leaseName, Namespace: s.namespace},
		Client:     s.client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: s.identity},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, ReleaseOnCancel: true, Name: leaseName,
			LeaseDuration: s.lease, RenewDeadline: s.lease * 2 / 3, RetryPeriod: s.lease / 6,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) { _ = s.lead(ctx) },
				OnStoppedLeading: func() { s.log.Info("leader: lost the lease; singletons stopped", "identity", s.identity) },
			},
		})
		if err != nil {
			return fmt.Errorf("leader election: %w", err)
		}
		le.Run(ctx) // returns when leadership is lost or ctx ends
	}
	return nil
}

// lead runs the jobs until ctx ends (leadership lost or shutdown).
func (s *singletons) lead(ctx context.Context) error {
	s.leader.Store(true)
	s.gauge.Set(1)
	defer func() {
		s.leader.Store(false)
		s.gauge.Set(0)
	}()
	s.log.Info("leader: running the singletons", "identity", s.identity, "jobs", len(s.jobs))
	done := make(chan error, len(s.jobs))
	for _, job := range s.jobs {
		go func() { done <- job(ctx) }()
	}
	var first error
	for range s.jobs {
		if err := <-done; err != nil && first == nil && ctx.Err() == nil {
			first = err
			s.log.Error("leader: a singleton failed", "error", err)
		}
	}
	<-ctx.Done()
	return first
}

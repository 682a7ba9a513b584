package publish

import (
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/xds/resource"
)

// convergence is what one proxy has been published and has yet to ACK.
type convergence struct {
	published map[resourcev3.Type]string // versions in the proxy's snapshot
	pending   map[resourcev3.Type]string // moved by a model change, not yet ACKed
	changedAt time.Time                  // the earliest change still pending
}

// newConvergenceHistogram is meshd_xds_convergence_seconds, with the
// buckets of the server's latency histograms: 1 ms to about 33 s.
func newConvergenceHistogram() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meshd_xds_convergence_seconds",
		Help:    "Time from a Kubernetes change being noticed to a proxy ACKing every resource type it moved.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)})
}

// RegisterMetrics registers the publisher's collectors.
func (p *Publisher) RegisterMetrics(reg prometheus.Registerer) error {
	return reg.Register(p.convergence)
}

// OnACK records that a proxy holds a version of a type; when it holds every
// type a model change moved, its convergence time is observed.
func (p *Publisher) OnACK(nodeID, typeURL, version string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.conv[nodeID]
	if c == nil || c.pending[typeURL] != version {
		return
	}
	delete(c.pending, typeURL)
	if len(c.pending) == 0 && !c.changedAt.IsZero() {
		p.convergence.Observe(p.clock.Since(c.changedAt).Seconds())
		c.changedAt = time.Time{}
	}
}

// trackLocked notes which types a model change moved for the proxy.
func (p *Publisher) trackLocked(nodeID string, snap *resource.Snapshot) {
	c := p.conv[nodeID]
	if c == nil {
		c = &convergence{published: map[resourcev3.Type]string{}, pending: map[resourcev3.Type]string{}}
		p.conv[nodeID] = c
	}
	for _, t := range resource.Types() {
		v := snap.GetVersion(t)
		if c.published[t] == v {
			continue
		}
		c.published[t] = v
		if !p.changedAt.IsZero() && t != resourcev3.SecretType {
			c.pending[t] = v
		}
	}
	if len(c.pending) > 0 && c.changedAt.IsZero() && !p.changedAt.IsZero() {
		c.changedAt = p.changedAt
	}
}

package publish

import (
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/xds/resource"
)

// convergence is what one proxy has been published and has yet to ACK.
// Both by type, at its place in ADS order (resource.Order).
type convergence struct {
	published [resource.NumTypes]string // versions in the proxy's snapshot
	pending   [resource.NumTypes]string // moved by a model change, not yet ACKed ("": not pending)
	npending  int                       // types pending
	changedAt time.Time                 // the earliest change still pending
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
	i := resource.Order(typeURL)
	if c == nil || i >= resource.NumTypes || version == "" || c.pending[i] != version {
		return
	}
	c.pending[i] = ""
	c.npending--
	if c.npending == 0 && !c.changedAt.IsZero() {
		p.convergence.Observe(p.clock.Since(c.changedAt).Seconds())
		c.changedAt = time.Time{}
	}
}

// trackLocked notes which types a model change moved for the proxy.
func (p *Publisher) trackLocked(nodeID string, snap *resource.Snapshot) {
	c := p.conv[nodeID]
	if c == nil {
		c = &convergence{}
		p.conv[nodeID] = c
	}
	for i, t := range resource.Types() {
		var v string
		if set, ok := snap.SetAt(i); ok {
			v = set.Version()
		}
		if c.published[i] == v {
			continue
		}
		c.published[i] = v
		if !p.changedAt.IsZero() && t != resourcev3.SecretType {
			switch {
			case c.pending[i] == "" && v != "":
				c.npending++
			case c.pending[i] != "" && v == "":
				c.npending--
			}
			c.pending[i] = v
		}
	}
	if c.npending > 0 && c.changedAt.IsZero() && !p.changedAt.IsZero() {
		c.changedAt = p.changedAt
	}
}

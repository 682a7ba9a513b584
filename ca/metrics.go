package ca

import (
	"crypto/x509"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the CA's Prometheus collectors. A nil *Metrics records nothing.
type Metrics struct {
	issued     *prometheus.CounterVec
	failures   prometheus.Counter
	latency    prometheus.Histogram
	rootExpiry prometheus.Gauge
	leafExpiry prometheus.Gauge
}

// NewMetrics creates the collectors and registers them on reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshd_ca_certificates_issued_total",
			Help: "Certificates issued, by backend."}, []string{"backend"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshd_ca_issue_failures_total",
			Help: "Certificate requests that failed."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meshd_ca_issue_seconds",
			Help: "Time to issue one certificate.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}),
		rootExpiry: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meshd_ca_root_expiry_timestamp_seconds",
			Help: "Expiry of the earliest-expiring trusted root (Unix seconds)."}),
		leafExpiry: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meshd_ca_last_leaf_expiry_timestamp_seconds",
			Help: "Expiry of the most recently issued leaf (Unix seconds)."}),
	}
	if reg != nil {
		reg.MustRegister(m.issued, m.failures, m.latency, m.rootExpiry, m.leafExpiry)
	}
	return m
}

// ObserveIssue records one issuance (or failure) by any backend.
func (m *Metrics) ObserveIssue(d time.Duration, c *Certificate, err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.failures.Inc()
		return
	}
	m.issued.WithLabelValues(c.Backend).Inc()
	m.latency.Observe(d.Seconds())
	m.leafExpiry.Set(float64(c.Leaf.NotAfter.Unix()))
}

func (m *Metrics) observeRoots(roots []*x509.Certificate) {
	if m == nil || len(roots) == 0 {
		return
	}
	earliest := roots[0].NotAfter
	for _, r := range roots[1:] {
		if r.NotAfter.Before(earliest) {
			earliest = r.NotAfter
		}
	}
	m.rootExpiry.Set(float64(earliest.Unix()))
}

package xds

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/xds/resource"
)

// metrics are the xds server's Prometheus collectors.
type metrics struct {
	connected prometheus.Gauge
	pushes    *prometheus.CounterVec
	nacks     *prometheus.CounterVec
	denied    prometheus.Counter
	limited   *prometheus.CounterVec
	// ackLatency: from sending a response to its ACK, by type.
	ackLatency *prometheus.HistogramVec
	// The served types' series, by resource.Order: each response and ACK
	// finds its type's without hashing the label value.
	pushesBy [resource.NumTypes]prometheus.Counter
	ackedBy  [resource.NumTypes]prometheus.Observer
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meshd_xds_connected_streams", Help: "Open, authenticated xDS streams."}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshd_xds_pushes_total",
			Help: "xDS responses sent, by resource type."}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshd_xds_nacks_total",
			Help: "xDS responses rejected by proxies, by resource type."}, []string{"type"}),
		denied: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshd_xds_denied_total",
			Help: "xDS requests refused with PermissionDenied."}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshd_xds_limited_total",
			Help: "Streams refused or requests throttled by a per-client limit, by limit."}, []string{"limit"}),
		ackLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "meshd_xds_push_ack_seconds",
			Help: "Time from sending an xDS response to the proxy's ACK of it, by resource type.", Buckets: latencyBuckets}, []string{"type"}),
	}
	// Every series a dashboard asks for exists from the start, at 0.
	for i, url := range resource.Types() {
		t := metricType(url)
		m.pushesBy[i] = m.pushes.WithLabelValues(t)
		m.nacks.WithLabelValues(t)
		m.ackedBy[i] = m.ackLatency.WithLabelValues(t)
	}
	for _, l := range []string{"streams_per_identity", "request_rate", "subscribed_names", "connections_per_identity"} {
		m.limited.WithLabelValues(l)
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.pushes, m.nacks, m.denied, m.limited, m.ackLatency)
	}
	return m
}

// pushed counts a response of the type.
func (m *metrics) pushed(typeURL string) {
	if i := resource.Order(typeURL); i < resource.NumTypes {
		m.pushesBy[i].Inc()
		return
	}
	m.pushes.WithLabelValues(resource.ShortType(typeURL)).Inc()
}

// acked observes the time from a response of the type to its ACK.
func (m *metrics) acked(typeURL string, d time.Duration) {
	if i := resource.Order(typeURL); i < resource.NumTypes {
		m.ackedBy[i].Observe(d.Seconds())
		return
	}
	m.ackLatency.WithLabelValues(metricType(typeURL)).Observe(d.Seconds())
}

// latencyBuckets span 1 ms to about 33 s.
var latencyBuckets = prometheus.ExponentialBuckets(0.001, 2, 16)

package xds

import (
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
	for _, url := range resource.Types() {
		t := metricType(url)
		m.pushes.WithLabelValues(t)
		m.nacks.WithLabelValues(t)
		m.ackLatency.WithLabelValues(t)
	}
	for _, l := range []string{"streams_per_identity", "request_rate", "subscribed_names", "connections_per_identity"} {
		m.limited.WithLabelValues(l)
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.pushes, m.nacks, m.denied, m.limited, m.ackLatency)
	}
	return m
}

// latencyBuckets span 1 ms to about 33 s.
var latencyBuckets = prometheus.ExponentialBuckets(0.001, 2, 16)

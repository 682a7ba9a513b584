package xds

import "github.com/prometheus/client_golang/prometheus"

// metrics are the xds server's Prometheus collectors.
type metrics struct {
	connected prometheus.Gauge
	pushes    *prometheus.CounterVec
	nacks     *prometheus.CounterVec
	denied    prometheus.Counter
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
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.pushes, m.nacks, m.denied)
	}
	return m
}

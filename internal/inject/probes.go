package inject

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/k8s"
)

// rewriteProbes points the app containers' probes at the sidecar's
// readiness port, the way Istio's injector does: the app's ports take only
// what the sidecar lets through (mutual TLS in STRICT mode), so the
// kubelet's plaintext probe would be refused there, an HTTPS one would
// fail its handshake (it has no client certificate), and a tcpSocket one
// would be answered by the sidecar whatever the app's state. Each probe
// becomes an HTTP GET of /app-health/<container>/<readyz|livez|startupz>
// on the readiness port, its timing and thresholds kept: a plain-HTTP
// probe is forwarded to the app with the original path and headers; a
// gRPC, tcpSocket or HTTPS probe the sidecar runs itself every period of
// the probe, and the GET answers with its last result (see
// bootstrap.AppProbe). The sidecar reaches the app where the kubelet would
// have: at the pod's address, port <port> (bootstrap.ProbeArgs); without
// interception (meshd.io/interception: none) on 127.0.0.1, where the app
// listens then (the sidecar's inbound listeners hold the pod's address).
//
// Left as they are: probes with a host of their own and exec probes (they
// run in the container, on its loopback, which the mesh leaves alone).
//
// It returns the JSON patch replacing each rewritten probe and the probes
// the sidecar's bootstrap needs, by path.
func rewriteProbes(pod *corev1.Pod) ([]patchOp, map[string]bootstrap.AppProbe) {
	var ops []patchOp
	probes := map[string]bootstrap.AppProbe{}
	for ci := range pod.Spec.Containers {
		c := &pod.Spec.Containers[ci]
		for _, k := range []struct {
			field, kind string
			probe       *corev1.Probe
		}{{"readinessProbe", "readyz", c.ReadinessProbe}, {"livenessProbe", "livez", c.LivenessProbe}, {"startupProbe", "startupz", c.StartupProbe}} {
			target, ok := probeTarget(c, k.probe)
			if !ok {
				continue
			}
			target.PodIP = pod.Annotations[k8s.AnnotationInterception] != "none"
			path := fmt.Sprintf("%s%s/%s", bootstrap.AppProbePrefix, c.Name, k.kind)
			rewritten := k.probe.DeepCopy()
			rewritten.ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Port: intstr.FromInt32(ReadinessPort), Path: path, Scheme: corev1.URISchemeHTTP}}
			if target.Kind == "" {
				rewritten.HTTPGet.HTTPHeaders = k.probe.HTTPGet.HTTPHeaders // forwarded with the probe
			}
			ops = append(ops, patchOp{"replace", fmt.Sprintf("/spec/containers/%d/%s", ci, k.field), rewritten})
			probes[path] = target
		}
	}
	return ops, probes
}

// probeTarget is what the sidecar does for a probe of the pod itself: an
// HTTP GET forwarded, or a check of its own (gRPC, TCP, HTTPS). ok is false
// for probes left alone: none, exec, a host of their own, a port that is
// not one of the container's, the readiness port itself, or a period or
// timeout over an hour.
func probeTarget(c *corev1.Container, p *corev1.Probe) (target bootstrap.AppProbe, ok bool) {
	if p == nil {
		return target, false
	}
	target.Period, target.Timeout = p.PeriodSeconds, p.TimeoutSeconds
	var port int32
	switch {
	case p.HTTPGet != nil:
		g := p.HTTPGet
		if g.Host != "" {
			return target, false
		}
		port, target.Path = containerPort(c, g.Port), g.Path
		if target.Path == "" {
			target.Path = "/"
		}
		if strings.EqualFold(string(g.Scheme), string(corev1.URISchemeHTTPS)) {
			target.Kind = bootstrap.ProbeHTTPS
			for _, h := range g.HTTPHeaders {
				if target.Headers == nil {
					target.Headers = map[string]string{}
				}
				target.Headers[h.Name] = h.Value
			}
		}
	case p.TCPSocket != nil:
		if p.TCPSocket.Host != "" {
			return target, false
		}
		port, target.Kind = containerPort(c, p.TCPSocket.Port), bootstrap.ProbeTCP
	case p.GRPC != nil:
		port, target.Kind = p.GRPC.Port, bootstrap.ProbeGRPC
		if p.GRPC.Service != nil {
			target.Service = *p.GRPC.Service
		}
	default:
		return target, false
	}
	if port <= 0 || port > 65535 || port == ReadinessPort {
		return target, false
	}
	target.Port = uint32(port)
	return target, target.Validate() == nil // a period or timeout beyond the sidecar's bounds: left alone
}

// containerPort resolves a probe's port (a number or a named container
// port); 0 if it names no port of the container.
func containerPort(c *corev1.Container, port intstr.IntOrString) int32 {
	if port.Type == intstr.Int {
		if port.IntVal > 0 && port.IntVal < 65536 {
			return port.IntVal
		}
		return 0
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return p.ContainerPort
		}
	}
	return 0
}

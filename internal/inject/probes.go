package inject

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshd/meshd/bootstrap"
)

// rewriteProbes points the app containers' HTTP probes at the sidecar's
// readiness port, the way Istio's injector does: the app's ports take only
// what the sidecar lets through (mutual TLS in STRICT mode), so the
// kubelet's plaintext probe would be refused there. The sidecar forwards
// /app-health/<container>/<readyz|livez|startupz> to the app on
// 127.0.0.1:<port> with the original path and headers.
//
// Left as they are: probes with a host of their own, HTTPS probes (the
// sidecar would have to skip the app's certificate check), and tcpSocket,
// gRPC and exec probes.
//
// It returns the JSON patch replacing each rewritten probe and the routes
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
			get := httpGet(k.probe)
			if get == nil {
				continue
			}
			port := containerPort(c, get.Port)
			if port == 0 || port == ReadinessPort {
				continue
			}
			path := fmt.Sprintf("%s%s/%s", bootstrap.AppProbePrefix, c.Name, k.kind)
			rewritten := k.probe.DeepCopy()
			rewritten.HTTPGet.Port = intstr.FromInt32(ReadinessPort)
			rewritten.HTTPGet.Path = path
			ops = append(ops, patchOp{"replace", fmt.Sprintf("/spec/containers/%d/%s", ci, k.field), rewritten})
			target := get.Path
			if target == "" {
				target = "/"
			}
			probes[path] = bootstrap.AppProbe{Port: uint32(port), Path: target}
		}
	}
	return ops, probes
}

// httpGet returns a probe's plain-HTTP GET to the pod itself, or nil.
func httpGet(p *corev1.Probe) *corev1.HTTPGetAction {
	if p == nil || p.HTTPGet == nil || p.HTTPGet.Host != "" || strings.EqualFold(string(p.HTTPGet.Scheme), string(corev1.URISchemeHTTPS)) {
		return nil
	}
	return p.HTTPGet
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

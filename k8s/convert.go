package k8s

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meshd/meshd/internal/iptables"
	"github.com/meshd/meshd/model"
)

// Labels that put workloads into the mesh and choose their mode.
const (
	// LabelInject on a namespace ("enabled") puts its pods into the mesh; on
	// a pod, "false" keeps it out and "true" puts it in.
	LabelInject = "meshd.io/inject"
	// LabelMTLSMode on a namespace or pod chooses STRICT (default) or
	// PERMISSIVE; the pod's label wins.
	LabelMTLSMode = "meshd.io/mtls-mode"
	// AnnotationProxyID on a pod is the ID of its injected sidecar.
	AnnotationProxyID = "meshd.io/proxy-id"
	// AnnotationStatus on a pod says whether the injector gave it a sidecar
	// (StatusInjected) or why not ("skipped: <reason>", StatusSkipped).
	AnnotationStatus = "meshd.io/status"
	StatusInjected   = "injected"
	StatusSkipped    = "skipped"
	// AnnotationInterception "none" on a pod: its traffic is not redirected
	// to the sidecar (no init container); the app talks to the sidecar's
	// listeners directly (model.Workload.NoInterception).
	AnnotationInterception = "meshd.io/interception"
	// AnnotationServerFirstPorts on a pod lists ports ("25,3306") whose
	// server speaks first (model.Port.ServerFirst).
	AnnotationServerFirstPorts = "meshd.io/server-first-ports"
	// AnnotationDetectionTimeout on a pod ("500ms") sets how long its
	// sidecar waits for a client's first bytes to tell mutual TLS from
	// plaintext (model.Workload.DetectionTimeout).
	AnnotationDetectionTimeout = "meshd.io/protocol-detection-timeout"
	// AnnotationEgress on a pod, or on a namespace for its pods, scopes the
	// sidecar's outbound configuration to the services it lists
	// ("./*,kube-system/kube-dns"; see model.ParseEgress).
	AnnotationEgress = "meshd.io/egress"
	// AnnotationOutboundTraffic on a pod, or on a namespace for its pods:
	// "allow-any" (the default) lets the app reach destinations outside
	// the mesh (passed through as it sent them), "registry-only" has its
	// sidecar refuse them (Istio's outboundTrafficPolicy REGISTRY_ONLY):
	// only the services of the mesh in its egress scope are reached, and
	// what the interception leaves out (meshd.io/exclude-outbound-*).
	AnnotationOutboundTraffic = "meshd.io/outbound-traffic"
	// AnnotationExcludeInboundPorts on a pod lists ports ("9100,8081")
	// whose inbound traffic skips the sidecar: reached directly, in
	// plaintext, without the mesh's identity checks or policies (a port an
	// outside scraper must reach on a STRICT pod). Meshed clients reach
	// the pod on them in plaintext too (model.Workload.Bypassed).
	// AnnotationExcludeOutboundPorts and AnnotationExcludeOutboundCIDRs
	// list destination ports and IPv4 ranges ("198.18.5.0/24") the app
	// reaches directly. The interception rules are made when the pod
	// starts: a change applies to pods started after it.
	AnnotationExcludeInboundPorts  = "meshd.io/exclude-inbound-ports"
	AnnotationExcludeOutboundPorts = "meshd.io/exclude-outbound-ports"
	AnnotationExcludeOutboundCIDRs = "meshd.io/exclude-outbound-cidrs"
	// AnnotationRewriteProbes "false" on a pod leaves its probes as the
	// kubelet sends them (see inject's rewriteProbes): in STRICT mode its
	// HTTP, gRPC and HTTPS probes are then refused.
	AnnotationRewriteProbes = "meshd.io/rewrite-probes"
	// ContainerProxy and ContainerInit are the injected sidecar and init
	// container (both among the pod's init containers).
	ContainerProxy = "meshd-proxy"
	ContainerInit  = "meshd-init"
)

// Problem is an object skipped (wholly or in part) because it is invalid
// for the mesh (model.Problem; translation reports the same type).
type Problem = model.Problem

// Convert builds the mesh model from Kubernetes state. Invalid objects are
// skipped alone and reported as Problems; everything else goes into the
// snapshot. Convert is pure: it reads st and never mutates it. A Converter
// does the same for a sequence of states, converting only what changed.
func Convert(st *State, trustDomain string) (*model.Snapshot, []Problem) {
	return NewConverter(trustDomain).Convert(st)
}

// problems collects the Problems found converting one object.
type problems []Problem

func (ps *problems) add(kind, ns, name, reason, format string, args ...any) {
	*ps = append(*ps, Problem{Kind: kind, Namespace: ns, Name: name, Reason: reason, Message: fmt.Sprintf(format, args...)})
}

// workload converts a pod; finished pods are left out.
func workload(p *corev1.Pod, ns *corev1.Namespace, trustDomain string, ps *problems) (w *model.Workload, serverFirstPorts string) {
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil, ""
	}
	if err := validNames("Pod", p); err != nil {
		ps.add("Pod", p.Namespace, p.Name, "InvalidName", "%v; pod left out", err)
		return nil, ""
	}
	sa := cmp.Or(p.Spec.ServiceAccountName, "default")
	w = &model.Workload{
		Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), ServiceAccount: sa, Node: p.Spec.NodeName, Zone: p.Labels[corev1.LabelTopologyZone],
		Identity: model.SPIFFEID(trustDomain, p.Namespace, sa),
		Meshed:   meshed(p, ns),
		Mode:     mode(p, ns, ps),
		ProxyID:  p.Annotations[AnnotationProxyID],

		NoInterception: p.Annotations[AnnotationInterception] == "none",
	}
	sidecarImage(p, ps)
	if why, ok := strings.CutPrefix(p.Annotations[AnnotationStatus], StatusSkipped+": "); ok {
		ps.add("Pod", p.Namespace, p.Name, "NotInjected", "meshd did not inject a sidecar: %s", why)
	}
	if ip, err := netip.ParseAddr(p.Status.PodIP); err == nil && ip.Is4() {
		w.IP = ip.String()
	}
	w.Egress = egress(p, ns, ps)
	w.RegistryOnly = registryOnly(p, ns, ps, w.Meshed && w.NoInterception)
	if v, ok := p.Annotations[AnnotationDetectionTimeout]; ok {
		d, err := time.ParseDuration(v)
		if err != nil || d < 10*time.Millisecond || d > time.Minute {
			ps.add("Pod", p.Namespace, p.Name, "InvalidAnnotation", "annotation %s=%q is not a duration from 10ms to 1m; using the mesh's", AnnotationDetectionTimeout, v)
		} else {
			w.DetectionTimeout = d
		}
	}
	if v, ok := p.Annotations[AnnotationExcludeInboundPorts]; ok {
		ports, err := ParsePorts(v)
		if err != nil {
			ps.add("Pod", p.Namespace, p.Name, "InvalidAnnotation", "annotation %s=%q: %v; no port bypasses the sidecar", AnnotationExcludeInboundPorts, v, err)
		} else {
			w.Bypassed = ports
		}
	}
	for _, ctr := range p.Spec.Containers {
		for _, cp := range ctr.Ports {
			if cp.Protocol != "" && cp.Protocol != corev1.ProtocolTCP {
				continue
			}
			if cp.ContainerPort <= 0 || cp.ContainerPort > 65535 {
				ps.add("Pod", p.Namespace, p.Name, "InvalidPort", "container %s: port %d is not 1-65535; port skipped", ctr.Name, cp.ContainerPort)
				continue
			}
			w.Ports = append(w.Ports, model.Port{Name: cp.Name, Port: uint32(cp.ContainerPort), Protocol: protocolFromName(cp.Name)})
		}
	}
	return w, p.Annotations[AnnotationServerFirstPorts]
}

// ParsePorts parses a list of ports ("9100, 8081") as the interception
// does, into sorted unique ports.
func ParsePorts(v string) ([]uint32, error) {
	ports, err := iptables.ParsePorts(v)
	if err != nil {
		return nil, err
	}
	out := make([]uint32, len(ports))
	for i, p := range ports {
		out[i] = uint32(p)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// ParseCIDRs parses a list of ranges ("198.18.5.0/24, 198.19.0.1/32") as
// the interception does; only IPv4 ones (its rules are iptables', not
// ip6tables').
func ParseCIDRs(v string) ([]netip.Prefix, error) {
	prefixes, err := iptables.ParseCIDRs(v)
	if err != nil {
		return nil, err
	}
	for i, p := range prefixes {
		if !p.Addr().Is4() {
			return nil, fmt.Errorf("%s: want an IPv4 range such as 198.18.5.0/24", p)
		}
		prefixes[i] = p.Masked()
	}
	return prefixes, nil
}

// egress is the pod's outbound scope: its annotation, else its namespace's.
// A scope that does not parse is reported and not applied (the sidecar gets
// every service: a typo must not cut a workload off).
func egress(p *corev1.Pod, ns *corev1.Namespace, ps *problems) model.Egress {
	kind, name, v, ok := "Pod", p.Name, p.Annotations[AnnotationEgress], true
	if _, set := p.Annotations[AnnotationEgress]; !set {
		if ns == nil {
			return nil
		}
		kind, name = "Namespace", ""
		if v, ok = ns.Annotations[AnnotationEgress]; !ok {
			return nil
		}
	}
	e, err := model.ParseEgress(v, p.Namespace)
	if err != nil {
		if kind == "Pod" {
			ps.add(kind, p.Namespace, name, "InvalidAnnotation", "annotation %s: %v; the sidecar gets every service", AnnotationEgress, err)
		} else {
			// Every pod of the namespace finds it: Converter reports it once.
			ps.add(kind, "", p.Namespace, "InvalidAnnotation", "annotation %s: %v; its pods' sidecars get every service", AnnotationEgress, err)
		}
		return nil
	}
	return e
}

// registryOnly reads the pod's outbound traffic policy: its annotation,
// else its namespace's. A value that is neither allow-any nor
// registry-only is reported and read as registry-only (the stricter, as
// an unknown mTLS mode is read as STRICT). A sidecar without interception
// cannot hold the app back (it connects where it likes): uncaptured (a
// meshed pod without interception) is reported.
func registryOnly(p *corev1.Pod, ns *corev1.Namespace, ps *problems, uncaptured bool) bool {
	kind, name, v := "Pod", p.Name, p.Annotations[AnnotationOutboundTraffic]
	if _, set := p.Annotations[AnnotationOutboundTraffic]; !set && ns != nil {
		kind, name, v = "Namespace", "", ns.Annotations[AnnotationOutboundTraffic]
	}
	only := true
	switch v {
	case "", "allow-any":
		only = false
	case "registry-only":
	default:
		if kind == "Pod" {
			ps.add(kind, p.Namespace, name, "InvalidAnnotation", "annotation %s=%q is neither allow-any nor registry-only; using registry-only", AnnotationOutboundTraffic, v)
		} else { // every pod of the namespace finds it: Converter reports it once
			ps.add(kind, "", p.Namespace, "InvalidAnnotation", "annotation %s=%q is neither allow-any nor registry-only; its pods use registry-only", AnnotationOutboundTraffic, v)
		}
	}
	if only && uncaptured {
		ps.add("Pod", p.Namespace, p.Name, "RegistryOnlyNotEnforced", "outbound traffic is registry-only, but the pod's sidecar does not intercept (%s: none): its app reaches any destination", AnnotationInterception)
	}
	return only
}

// serverFirst marks the ports a pod's annotation (v) declares server-first
// (Service appProtocols have marked theirs already).
func serverFirst(w *model.Workload, v string, ps *problems) {
	if v == "" {
		return
	}
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
		i := slices.IndexFunc(w.Ports, func(port model.Port) bool { return uint64(port.Port) == n })
		if err != nil || i < 0 {
			ps.add("Pod", w.Namespace, w.Name, "InvalidAnnotation", "annotation %s=%q: %q is not one of the pod's ports; ignored", AnnotationServerFirstPorts, v, f)
			continue
		}
		w.Ports[i].ServerFirst = true
		w.Ports[i].Protocol = model.ProtocolTCP // nothing to route by: the client says nothing first
	}
}

// pullErrors are the kubelet's waiting reasons for an image it cannot get.
var pullErrors = map[string]bool{"ErrImagePull": true, "ImagePullBackOff": true, "ErrImageNeverPull": true, "InvalidImageName": true}

// sidecarImage reports an injected container whose image the node cannot
// get: the pod never starts, and the kubelet's words do not say that the
// image came from meshd.
func sidecarImage(p *corev1.Pod, ps *problems) {
	// Both injected containers are init containers.
	for _, st := range p.Status.InitContainerStatuses {
		if st.Name != ContainerProxy && st.Name != ContainerInit || st.State.Waiting == nil || !pullErrors[st.State.Waiting.Reason] {
			continue
		}
		ps.add("Pod", p.Namespace, p.Name, "SidecarImageUnavailable",
			"meshd's injected container %s cannot start: the node cannot get image %s (%s: %s); meshd injects the images its own Deployment runs (container meshd, init container proxy-image; names in deploy/images.env): load them on the node or point meshd at images the node can pull",
			st.Name, st.Image, st.State.Waiting.Reason, st.State.Waiting.Message)
	}
}

func meshed(p *corev1.Pod, ns *corev1.Namespace) bool {
	if p.Annotations[AnnotationStatus] == StatusInjected {
		return true
	}
	// The injector left it out (host networking, ...): no sidecar answers
	// for it, so nobody may expect mutual TLS from it.
	if strings.HasPrefix(p.Annotations[AnnotationStatus], StatusSkipped) || NotMeshable(p) != "" {
		return false
	}
	if p.Labels[LabelInject] == "true" {
		return true
	}
	return ns != nil && ns.Labels[LabelInject] == "enabled"
}

// NotMeshable says why a pod gets no sidecar whatever its namespace says
// ("" if it may have one): it opted out (label meshd.io/inject=false), or it
// uses host networking. The injector skips such a pod; the model counts it
// out of the mesh.
func NotMeshable(p *corev1.Pod) string {
	switch {
	case p.Labels[LabelInject] == "false":
		return "opted out (label " + LabelInject + "=false)"
	case p.Spec.HostNetwork:
		return "hostNetwork pods share the node's network namespace: meshd cannot intercept their traffic without intercepting the node's"
	}
	return ""
}

func mode(p *corev1.Pod, ns *corev1.Namespace, ps *problems) model.Mode {
	kind, name, v := "Pod", p.Name, p.Labels[LabelMTLSMode]
	if v == "" {
		if ns != nil {
			kind, name, v = "Namespace", "", ns.Labels[LabelMTLSMode]
		}
	}
	switch m := model.Mode(strings.ToUpper(v)); m {
	case "":
		return model.ModeStrict
	case model.ModeStrict, model.ModePermissive:
		return m
	}
	if kind == "Pod" {
		ps.add(kind, p.Namespace, name, "InvalidMTLSMode", "label %s=%q is neither STRICT nor PERMISSIVE; using STRICT", LabelMTLSMode, v)
	} else { // every pod of the namespace finds it: Converter reports it once
		ps.add(kind, "", p.Namespace, "InvalidMTLSMode", "label %s=%q is neither STRICT nor PERMISSIVE; using STRICT", LabelMTLSMode, v)
	}
	return model.ModeStrict
}

// serviceConv converts one Service. pod finds an endpoint's pod by key (its
// workload before service ports are added; nil: none), and what the
// conversion read of pods and found for them is recorded, so that a
// Converter knows when to convert the service again and which workloads'
// ports it gives.
type serviceConv struct {
	pod      func(key string) *model.Workload
	problems problems
	// deps are the pods its endpoints named, as they were read.
	deps map[string]podDep
	// ports are the target ports resolved to pods.
	ports []podPort
}

// podDep is what an endpoint takes from its pod.
type podDep struct {
	present, meshed bool
	identity        string
	bypassed        string
}

func depOf(w *model.Workload) podDep {
	if w == nil {
		return podDep{}
	}
	d := podDep{present: true, meshed: w.Meshed, identity: w.Identity}
	if len(w.Bypassed) > 0 {
		d.bypassed = fmt.Sprint(w.Bypassed)
	}
	return d
}

// podPort is a port a service resolves to the pod with key key.
type podPort struct {
	key  string
	port model.Port
}

// service converts a Service and its EndpointSlices. ExternalName services
// are not part of the mesh.
func (c *serviceConv) service(s *corev1.Service, slices []*discoveryv1.EndpointSlice) *model.Service {
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	if err := validNames("Service", s); err != nil {
		c.problems.add("Service", s.Namespace, s.Name, "InvalidName", "%v; service skipped", err)
		return nil
	}
	svc := &model.Service{Namespace: s.Namespace, Name: s.Name, ClientIPAffinity: s.Spec.SessionAffinity == corev1.ServiceAffinityClientIP}
	if ip, err := netip.ParseAddr(s.Spec.ClusterIP); err == nil && ip.Is4() {
		svc.ClusterIP = ip.String()
		svc.NodeLocal = ptrOr(s.Spec.InternalTrafficPolicy, corev1.ServiceInternalTrafficPolicyCluster) == corev1.ServiceInternalTrafficPolicyLocal
	}
	if len(s.Spec.Ports) == 0 {
		c.problems.add("Service", s.Namespace, s.Name, "NoPorts", "the service has no ports; skipped")
		return nil
	}
	seenNum, seenName := map[int32]bool{}, map[string]bool{}
	for _, p := range s.Spec.Ports {
		if seenNum[p.Port] || seenName[p.Name] {
			c.problems.add("Service", s.Namespace, s.Name, "ConflictingPorts", "port %d (%q) is declared twice; service skipped", p.Port, p.Name)
			return nil
		}
		seenNum[p.Port], seenName[p.Name] = true, true
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue // UDP and SCTP are not proxied
		}
		if p.Port <= 0 || p.Port > 65535 {
			c.problems.add("Service", s.Namespace, s.Name, "InvalidPort", "port %d (%q) is not 1-65535; port skipped", p.Port, p.Name)
			continue
		}
		proto, ok := protocol(p)
		if !ok {
			c.problems.add("Service", s.Namespace, s.Name, "UnknownAppProtocol", "port %d: appProtocol %q is not one of http, http2, grpc, tcp, kubernetes.io/h2c, kubernetes.io/ws, or the server-first mysql, smtp, ftp, meshd.io/server-first; port skipped", p.Port, *p.AppProtocol)
			continue
		}
		svc.Ports = append(svc.Ports, model.Port{Name: p.Name, Port: uint32(p.Port), Protocol: proto, ServerFirst: serverFirstProtocols[appProtocol(p)]})
	}
	if len(svc.Ports) == 0 {
		return nil
	}
	slicesSortPorts(svc.Ports)
	svc.Endpoints = c.endpoints(svc, slices)
	if svc.ClusterIP != "" {
		svc.ZoneHints = allHinted(svc.Endpoints, func(e model.Endpoint) []string { return e.ForZones })
		svc.NodeHints = allHinted(svc.Endpoints, func(e model.Endpoint) []string { return e.ForNodes })
	}
	return svc
}

// endpoints collects the IPv4 endpoints of a service's slices for its ports,
// and records the resolved target ports on the workloads behind them.
func (c *serviceConv) endpoints(svc *model.Service, slices []*discoveryv1.EndpointSlice) []model.Endpoint {
	protos := map[string]model.Port{}
	for _, p := range svc.Ports {
		protos[p.Name] = p
	}
	seen := map[string]bool{}
	var out []model.Endpoint
	for _, sl := range slices {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		for _, sp := range sl.Ports {
			name := ptrOr(sp.Name, "")
			svcPort, ok := protos[name]
			if !ok || sp.Port == nil || *sp.Port <= 0 || *sp.Port > 65535 {
				continue
			}
			for _, e := range sl.Endpoints {
				for _, ep := range c.endpoint(e, name, uint32(*sp.Port), svcPort) {
					if k := ep.Address + "|" + name; !seen[k] {
						seen[k] = true
						out = append(out, ep)
					}
				}
			}
		}
	}
	sortEndpoints(out)
	// A port without a ready endpoint is served by the ones terminating
	// but still serving, as kube-proxy does (a rolling update of a single
	// pod, a pod draining its last requests): they count as ready then.
	readyPorts := map[string]bool{}
	for _, e := range out {
		if e.Ready {
			readyPorts[e.PortName] = true
		}
	}
	for i, e := range out {
		if e.Terminating && !readyPorts[e.PortName] {
			out[i].Ready = true
		}
	}
	return out
}

// allHinted reports whether a service's endpoints are to be picked by the
// hints that hints reads (model.Service.ZoneHints, NodeHints): some are
// ready, and every ready one has such hints. kube-proxy ignores the hints
// otherwise (the EndpointSlice controller is between two states, or the
// slices are not its own).
func allHinted(eps []model.Endpoint, hints func(model.Endpoint) []string) bool {
	ready := false
	for _, e := range eps {
		if e.Ready && !e.Terminating { // kube-proxy ignores hints when it falls back to terminating endpoints
			if len(hints(e)) == 0 {
				return false
			}
			ready = true
		}
	}
	return ready
}

func (c *serviceConv) endpoint(e discoveryv1.Endpoint, portName string, port uint32, svcPort model.Port) []model.Endpoint {
	var w *model.Workload
	if ref := e.TargetRef; ref != nil && ref.Kind == "Pod" {
		key := ref.Name + "." + ref.Namespace
		w = c.pod(key)
		if c.deps == nil {
			c.deps = map[string]podDep{}
		}
		c.deps[key] = depOf(w)
	}
	ready := ptrOr(e.Conditions.Ready, true)
	base := model.Endpoint{PortName: portName, Port: port, Ready: ready, Node: ptrOr(e.NodeName, ""),
		Terminating: !ready && ptrOr(e.Conditions.Terminating, false) && ptrOr(e.Conditions.Serving, false)}
	if e.Hints != nil {
		for _, z := range e.Hints.ForZones {
			base.ForZones = append(base.ForZones, z.Name)
		}
		for _, n := range e.Hints.ForNodes {
			base.ForNodes = append(base.ForNodes, n.Name)
		}
		slices.Sort(base.ForZones)
		slices.Sort(base.ForNodes)
		base.ForZones, base.ForNodes = slices.Compact(base.ForZones), slices.Compact(base.ForNodes)
	}
	if w != nil {
		base.Workload = w.Key()
		if w.Meshed && !w.Bypasses(port) {
			base.Identity = w.Identity
		}
		c.ports = append(c.ports, podPort{w.Key(), model.Port{Name: portName, Port: port, Protocol: svcPort.Protocol, ServerFirst: svcPort.ServerFirst}})
	}
	var out []model.Endpoint
	for _, a := range e.Addresses {
		if ip, err := netip.ParseAddr(a); err == nil && ip.Is4() {
			ep := base
			ep.Address = ip.String()
			out = append(out, ep)
		}
	}
	return out
}

// serverFirstProtocols are the appProtocols of protocols whose server
// speaks first (model.Port.ServerFirst).
var serverFirstProtocols = map[string]bool{"mysql": true, "smtp": true, "ftp": true, "meshd.io/server-first": true}

func appProtocol(p corev1.ServicePort) string {
	if p.AppProtocol == nil {
		return ""
	}
	return strings.ToLower(*p.AppProtocol)
}

// protocol derives a port's protocol from appProtocol, else from its name
// (http*, http2*, grpc*, as Istio does); unknown appProtocols are refused.
func protocol(p corev1.ServicePort) (model.Protocol, bool) {
	if p.AppProtocol == nil {
		return protocolFromName(p.Name), true
	}
	if serverFirstProtocols[appProtocol(p)] {
		return model.ProtocolTCP, true
	}
	switch appProtocol(p) {
	case "http", "kubernetes.io/ws":
		return model.ProtocolHTTP, true
	case "http2", "kubernetes.io/h2c":
		return model.ProtocolHTTP2, true
	case "grpc":
		return model.ProtocolGRPC, true
	case "tcp", "https", "tls", "kubernetes.io/wss":
		return model.ProtocolTCP, true
	}
	return "", false
}

func protocolFromName(name string) model.Protocol {
	n := strings.ToLower(name)
	switch {
	case strings.HasPrefix(n, "http2"):
		return model.ProtocolHTTP2
	case strings.HasPrefix(n, "grpc"):
		return model.ProtocolGRPC
	case strings.HasPrefix(n, "https"):
		return model.ProtocolTCP
	case strings.HasPrefix(n, "http"):
		return model.ProtocolHTTP
	}
	return model.ProtocolTCP
}

// uniquePorts sorts ports by number and keeps one per number; a number
// reached with two protocols becomes TCP, which carries either.
func uniquePorts(ports []model.Port) []model.Port {
	slicesSortPorts(ports)
	var out []model.Port
	for _, p := range ports {
		if n := len(out); n > 0 && out[n-1].Port == p.Port {
			if out[n-1].Protocol != p.Protocol {
				out[n-1].Protocol = model.ProtocolTCP
			}
			out[n-1].ServerFirst = out[n-1].ServerFirst || p.ServerFirst
			continue
		}
		out = append(out, p)
	}
	return out
}

func slicesSortPorts(ports []model.Port) {
	slices.SortStableFunc(ports, func(a, b model.Port) int { return cmp.Compare(a.Port, b.Port) })
}

func sortEndpoints(eps []model.Endpoint) {
	slices.SortFunc(eps, func(a, b model.Endpoint) int {
		return cmp.Or(cmp.Compare(a.Address, b.Address), cmp.Compare(a.PortName, b.PortName))
	})
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

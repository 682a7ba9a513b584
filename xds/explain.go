package xds

import (
	"fmt"
	"slices"
	"strings"

	"github.com/meshd/meshd/model"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds/translate"
)

// Explanation says why traffic from one workload to a service (or a pod)
// does or does not get mutual TLS: which listener, chain, cluster and
// secrets carry it, which identities are expected and presented, the
// server side's mode, and the misconfigurations found. It answers the
// "upstream connect error ... TLS error" question.
type Explanation struct {
	From  Side       `json:"from"`
	To    string     `json:"to"`
	Ports []PortPath `json:"ports"`
	// PodIP, when To is a pod, is what happens to calls made to the pod's
	// own address (not through a service), port by port.
	PodIP   []PodIPPath `json:"pod_ip,omitempty"`
	Verdict string      `json:"verdict"` // mtls, plaintext, mixed, refused, broken
	// Authorization is what the servers' policies decide for the client:
	// allowed, denied, limited (some HTTP requests only) or mixed.
	Authorization string   `json:"authorization,omitempty"`
	Finds         []string `json:"findings"`
}

// PodIPPath is a call to <pod IP>:<port>.
type PodIPPath struct {
	Address string `json:"address"`
	Port    uint32 `json:"port"`
	// Path is how the client's sidecar sends it: "passthrough" (as the app
	// sent it), an outbound-direct chain (headless services), or "no
	// sidecar".
	Path string `json:"path"`
	MTLS bool   `json:"mtls"`
	// Outcome is what the server side does with it.
	Outcome string `json:"outcome"`
}

// Side is one end as meshd sees it.
type Side struct {
	Workload  string `json:"workload"`
	Identity  string `json:"identity,omitempty"`
	Sidecar   bool   `json:"sidecar_expected"`
	Connected bool   `json:"proxy_connected"`
	Mode      string `json:"mode,omitempty"`
	// Egress is the client's outbound scope (meshd.io/egress), when it has
	// one: the services its sidecar is configured for.
	Egress []string `json:"egress,omitempty"`
	// Node is the node the pod runs on, when known.
	Node string `json:"node,omitempty"`
	// Zone is its node's zone, when the pod is labelled with it
	// (topology.kubernetes.io/zone).
	Zone string `json:"zone,omitempty"`
	// RegistryOnly: its sidecar refuses the calls it would pass through
	// (meshd.io/outbound-traffic: registry-only).
	RegistryOnly bool `json:"registry_only,omitempty"`
}

// PortPath is the path of one service port.
type PortPath struct {
	Port           uint32   `json:"port"`
	Protocol       string   `json:"protocol"`
	Listener       string   `json:"listener"`
	FilterChain    string   `json:"filter_chain"`
	Cluster        string   `json:"cluster"`
	Route          string   `json:"route,omitempty"`
	ClientSecrets  []string `json:"client_secrets"`
	ExpectedSANs   []string `json:"expected_server_sans"`
	ClientIdentity string   `json:"client_presents,omitempty"`
	// OutsideScope: the service is not in the client's egress scope, so its
	// sidecar has no chain for it: calls pass through as the app sent them.
	OutsideScope bool `json:"outside_egress_scope,omitempty"`
	// Balancing is how the client's sidecar picks the endpoint when it is
	// not the usual round robin: "client-ip-affinity" (the Service's
	// sessionAffinity ClientIP: the endpoint the client's address hashes
	// to, for as long as the endpoints stay), "node-local" (its
	// internalTrafficPolicy Local: only the endpoints on the client's node
	// are listed, the only ones it reaches), "zone:<zone>" (the endpoints
	// are hinted for zones, trafficDistribution PreferClose: only those
	// hinted for the client's zone are listed), "node:<node>" (the same
	// with node hints, PreferSameNode), or a list of these.
	Balancing string         `json:"balancing,omitempty"`
	Endpoints []EndpointPath `json:"endpoints"`
}

// EndpointPath is one endpoint behind a port.
type EndpointPath struct {
	Address string `json:"address"`
	Port    uint32 `json:"port"`
	Ready   bool   `json:"ready"`
	// Terminating: the endpoint's pod is terminating but still serving;
	// used only when no endpoint of the port is ready.
	Terminating  bool   `json:"terminating,omitempty"`
	Server       Side   `json:"server"`
	MTLS         bool   `json:"mtls"`
	InboundChain string `json:"inbound_chain,omitempty"`
	// Authorization is what the server's policies decide for the client
	// (nil when the server has no sidecar).
	Authorization *AuthzPath `json:"authorization,omitempty"`
}

// Explain builds the explanation from the model meshd last published and
// the proxies connected to this replica. from is a workload key
// (<pod>.<ns>); to is a service key (<svc>.<ns>) or a workload key.
func Explain(snap *model.Snapshot, proxies []ProxyStatus, from, to string) (*Explanation, error) {
	if snap == nil {
		return nil, fmt.Errorf("no mesh model yet (informers not synced)")
	}
	connected := map[string]ProxyStatus{}
	for _, p := range proxies {
		connected[p.NodeID] = p
	}
	e := &Explanation{To: to}
	w := snap.Workload(from)
	if w == nil {
		return nil, fmt.Errorf("no pod %q in the mesh model", from)
	}
	e.From = side(w, connected)
	e.From.Egress = w.Egress
	svcs := targets(snap, to)
	target := snap.Workload(to)
	if len(svcs) == 0 && target == nil {
		return nil, fmt.Errorf("no service or pod %q in the mesh model", to)
	}
	if !e.From.Connected {
		e.find("the client %s has no connected sidecar: its traffic leaves the pod as the app sent it (plaintext)", from)
		if e.From.Sidecar {
			e.find("%s is in an injected namespace but no proxy with node ID %s is connected to this meshd replica (not started, or connected to another replica)", from, from)
		}
	}
	for _, p := range connected[from].Types {
		if p.LastNACK != nil {
			e.find("the client sidecar rejected (NACKed) a config: %s", p.LastNACK.Error)
		}
	}
	for _, svc := range svcs {
		e.explainService(snap, svc, connected)
	}
	if target != nil && snap.Service(to) == nil {
		e.explainPodIP(snap, target, svcs, connected)
	}
	e.verdict()
	e.Authorization = e.authorizationSummary()
	return e, nil
}

// explainPodIP describes calls to a pod's own address. The outbound
// listener has chains for service addresses only (and for each endpoint of
// a headless service): anything else passes through as the app sent it, so
// that pod churn stays an endpoint (EDS) update instead of a listener
// update for every sidecar. A STRICT server refuses such a plaintext
// connection; a PERMISSIVE one takes it in plaintext.
func (e *Explanation) explainPodIP(snap *model.Snapshot, w *model.Workload, svcs []*model.Service, connected map[string]ProxyStatus) {
	if w.IP == "" {
		e.find("pod %s has no IP yet", w.Key())
		return
	}
	headless := map[uint32]string{}
	for _, svc := range svcs {
		if svc.ClusterIP != "" {
			continue
		}
		for _, ep := range svc.Endpoints {
			if ep.Workload == w.Key() {
				headless[ep.Port] = fmt.Sprintf("outbound-direct|%d|%s|%s", ep.Port, svc.Key(), ep.Address)
			}
		}
	}
	server := side(w, connected)
	for _, p := range w.Ports {
		pp := PodIPPath{Address: w.IP, Port: p.Port, Path: "passthrough"}
		switch {
		case !e.From.Sidecar:
			pp.Path = "no sidecar"
		case headless[p.Port] != "" && w.Meshed:
			pp.Path, pp.MTLS = headless[p.Port], true
		}
		switch {
		case pp.MTLS:
			pp.Outcome = "mutual TLS to " + w.Identity
		case pp.Path == "passthrough" && e.From.RegistryOnly:
			pp.Outcome = "refused: the client's outbound traffic is registry-only, and a pod's address is not a service"
		case !server.Sidecar:
			pp.Outcome = "plaintext: the server has no sidecar"
		case w.Mode == model.ModeStrict:
			pp.Outcome = "refused: the server is STRICT and the call arrives in plaintext"
		default:
			pp.Outcome = "plaintext, accepted: the server is PERMISSIVE"
		}
		e.PodIP = append(e.PodIP, pp)
	}
	if len(headless) == 0 && w.Meshed && e.From.Sidecar {
		e.find("calls to %s's own address (%s) pass through the client's sidecar without mutual TLS (only service addresses, and endpoints of headless services, get it, so that pod churn stays an EDS-only update); call it through a service", w.Key(), w.IP)
	}
}

// targets finds what "to" names: a service, or the services a pod backs.
func targets(snap *model.Snapshot, to string) []*model.Service {
	if svc := snap.Service(to); svc != nil {
		return []*model.Service{svc}
	}
	var out []*model.Service
	for svc := range snap.Services.Values() {
		if slices.ContainsFunc(svc.Endpoints, func(ep model.Endpoint) bool { return ep.Workload == to }) {
			out = append(out, svc)
		}
	}
	return out
}

// side describes a workload; a mode only where a sidecar enforces one.
func side(w *model.Workload, connected map[string]ProxyStatus) Side {
	_, ok := connected[w.Key()]
	s := Side{Workload: w.Key(), Identity: w.Identity, Sidecar: w.Meshed, Connected: ok, Node: w.Node, Zone: w.Zone, RegistryOnly: w.RegistryOnly && !w.NoInterception}
	if w.Meshed {
		s.Mode = string(w.Mode)
	}
	return s
}

func (e *Explanation) explainService(snap *model.Snapshot, svc *model.Service, connected map[string]ProxyStatus) {
	ids := map[string]bool{}
	for _, ep := range svc.Endpoints {
		if ep.Identity != "" {
			ids[ep.Identity] = true
		}
	}
	for _, p := range svc.Ports {
		pp := PortPath{Port: p.Port, Protocol: string(p.Protocol), Listener: translate.OutboundListener,
			Cluster: translate.ClusterName(svc, p.Port), ClientSecrets: []string{sds.NameDefault, sds.NameRootCA}}
		pp.FilterChain = pp.Cluster
		if svc.ClusterIP == "" {
			pp.FilterChain = "outbound-direct|" + fmt.Sprint(p.Port) + "|" + svc.Key() + "|<endpoint>"
		}
		if p.Protocol.IsHTTP() {
			pp.Route = pp.Cluster
		}
		if !e.From.Sidecar { // no listener, chain or secrets on the client side
			pp.Listener, pp.FilterChain, pp.Cluster, pp.Route, pp.ClientSecrets = "", "", "", "", nil
		}
		if e.From.Sidecar && !model.Egress(e.From.Egress).Allows(svc) {
			pp.OutsideScope = true
			pp.FilterChain, pp.Cluster, pp.Route, pp.ClientSecrets = "", translate.PassthroughCluster, "", nil
			if e.From.RegistryOnly {
				e.find("%s is outside the client's egress scope (annotation meshd.io/egress: %s) and the client's outbound traffic is registry-only: its sidecar refuses the calls; add the service to the scope", svc.Key(), strings.Join(e.From.Egress, ","))
			} else {
				e.find("%s is outside the client's egress scope (annotation meshd.io/egress: %s): its sidecar has no chain for it, so calls pass through in plaintext (a STRICT server refuses them); add the service to the scope", svc.Key(), strings.Join(e.From.Egress, ","))
			}
		}
		if e.From.Connected && !pp.OutsideScope {
			pp.ClientIdentity = e.From.Identity
		}
		chained := svc.ClusterIP != "" && e.From.Sidecar && !pp.OutsideScope
		var balancing []string
		if svc.ClientIPAffinity && chained {
			balancing = append(balancing, "client-ip-affinity")
		}
		eps, by := svc.Endpoints, ""
		if chained {
			eps, by = svc.ForClient(p, e.From.Node, e.From.Zone)
		}
		switch {
		case by != "":
			balancing = append(balancing, by)
		case !chained || svc.NodeLocal || !svc.ZoneHints && !svc.NodeHints:
		case svc.ZoneHints && e.From.Zone == "":
			e.find("%s's endpoints are hinted for zones (trafficDistribution PreferClose), but the client's pod has no zone label (topology.kubernetes.io/zone): it reaches every endpoint", svc.Key())
		default:
			e.find("%s port %d has no ready endpoint hinted for the client's node %q or zone %q: it reaches every endpoint", svc.Key(), p.Port, e.From.Node, e.From.Zone)
		}
		pp.Balancing = strings.Join(balancing, ",")
		for id := range ids {
			pp.ExpectedSANs = append(pp.ExpectedSANs, id)
		}
		slices.Sort(pp.ExpectedSANs)
		ready, terminating := 0, 0
		for _, ep := range eps {
			if ep.PortName != p.Name {
				continue
			}
			if ep.Ready {
				ready++
				if ep.Terminating {
					terminating++
				}
			}
			pp.Endpoints = append(pp.Endpoints, e.endpoint(snap, svc, ep, connected, pp.OutsideScope))
		}
		switch {
		case ready > 0 && terminating == ready:
			e.find("%s port %d has no ready endpoint: its endpoints terminating but still serving take the calls, as kube-proxy sends them", svc.Key(), p.Port)
		case ready == 0 && by == "node-local":
			e.find("%s port %d has no ready endpoint on the client's node %s, and its internalTrafficPolicy is Local: the client's calls fail", svc.Key(), p.Port, e.From.Node)
		case ready == 0:
			e.find("%s port %d has no ready endpoint: clients get \"no healthy upstream\" (503)", svc.Key(), p.Port)
		}
		e.Ports = append(e.Ports, pp)
	}
}

func (e *Explanation) endpoint(snap *model.Snapshot, svc *model.Service, ep model.Endpoint, connected map[string]ProxyStatus, outside bool) EndpointPath {
	plaintext := !e.From.Connected || outside // what the client's side sends
	out := EndpointPath{Address: ep.Address, Port: ep.Port, Ready: ep.Ready, Terminating: ep.Terminating, MTLS: ep.Identity != "" && !plaintext}
	w := snap.Workload(ep.Workload)
	if w == nil {
		e.find("endpoint %s:%d of %s has no pod in the model: plaintext to it", ep.Address, ep.Port, svc.Key())
		return out
	}
	out.Server = side(w, connected)
	if !w.Meshed {
		e.find("server %s has no sidecar (not injected): traffic to it is plaintext", w.Key())
		return out
	}
	if w.Bypasses(ep.Port) {
		e.find("server %s takes port %d out of its interception (annotation meshd.io/exclude-inbound-ports): the app is reached directly, in plaintext, with no identity check or policy", w.Key(), ep.Port)
		return out
	}
	out.Authorization = e.authorize(snap, w, svc, ep)
	if !slices.ContainsFunc(w.Ports, func(wp model.Port) bool { return wp.Port == ep.Port }) {
		e.find("server %s has no inbound chain for port %d", w.Key(), ep.Port)
	} else {
		out.InboundChain = fmt.Sprintf("inbound|%d|tls", ep.Port)
	}
	if !out.Server.Connected {
		e.find("server %s should have a sidecar but none is connected to this replica: with STRICT, clients see \"upstream connect error ... connection refused/reset\"", w.Key())
	}
	if plaintext && w.Mode == model.ModeStrict {
		e.find("server %s is STRICT and the client sends plaintext: the connection is closed (\"connection reset by peer\"); make the client a mesh member or set label meshd.io/mtls-mode=PERMISSIVE on the server", w.Key())
	}
	return out
}

func (e *Explanation) find(format string, args ...any) {
	f := fmt.Sprintf(format, args...)
	if !slices.Contains(e.Finds, f) {
		e.Finds = append(e.Finds, f)
	}
}

// verdict sums up: mtls when every path (endpoint, or pod-IP call) gets
// mutual TLS, plaintext when none does, mixed in between; refused when the
// only paths are pod-IP calls a STRICT server refuses, or calls the
// client's registry-only sidecar refuses; broken when no service endpoint
// is ready.
func (e *Explanation) verdict() {
	var mtls, plain, ready, refused int
	for _, p := range e.Ports {
		for _, ep := range p.Endpoints {
			if ep.Ready {
				ready++
			}
			if p.OutsideScope && e.From.RegistryOnly { // the client's sidecar refuses the call
				refused++
				continue
			}
			if ep.MTLS {
				mtls++
			} else {
				plain++
			}
		}
	}
	for _, p := range e.PodIP {
		ready++
		switch {
		case p.MTLS:
			mtls++
		case strings.HasPrefix(p.Outcome, "refused"):
			refused++
		default:
			plain++
		}
	}
	switch {
	case refused > 0 && mtls == 0 && plain == 0:
		e.Verdict = "refused"
	case ready == 0:
		e.Verdict = "broken"
	case plain+refused == 0:
		e.Verdict = "mtls"
	case mtls == 0:
		e.Verdict = "plaintext"
	default:
		e.Verdict = "mixed"
	}
	if e.Finds == nil {
		e.Finds = []string{}
	}
}

package xds

import (
	"fmt"
	"slices"

	"github.com/meshd/meshd/model"
	"github.com/meshd/meshd/xds/translate"
)

// Explanation says why traffic from one workload to a service (or a pod)
// does or does not get mutual TLS: which listener, chain, cluster and
// secrets carry it, which identities are expected and presented, the
// server side's mode, and the misconfigurations found. It answers the
// "upstream connect error ... TLS error" question.
type Explanation struct {
	From    Side       `json:"from"`
	To      string     `json:"to"`
	Ports   []PortPath `json:"ports"`
	Verdict string     `json:"verdict"` // mtls, plaintext, mixed, broken
	Finds   []string   `json:"findings"`
}

// Side is one end as meshd sees it.
type Side struct {
	Workload  string `json:"workload"`
	Identity  string `json:"identity,omitempty"`
	Sidecar   bool   `json:"sidecar_expected"`
	Connected bool   `json:"proxy_connected"`
	Mode      string `json:"mode,omitempty"`
}

// PortPath is the path of one service port.
type PortPath struct {
	Port           uint32         `json:"port"`
	Protocol       string         `json:"protocol"`
	Listener       string         `json:"listener"`
	FilterChain    string         `json:"filter_chain"`
	Cluster        string         `json:"cluster"`
	Route          string         `json:"route,omitempty"`
	ClientSecrets  []string       `json:"client_secrets"`
	ExpectedSANs   []string       `json:"expected_server_sans"`
	ClientIdentity string         `json:"client_presents,omitempty"`
	Endpoints      []EndpointPath `json:"endpoints"`
}

// EndpointPath is one endpoint behind a port.
type EndpointPath struct {
	Address      string `json:"address"`
	Port         uint32 `json:"port"`
	Ready        bool   `json:"ready"`
	Server       Side   `json:"server"`
	MTLS         bool   `json:"mtls"`
	InboundChain string `json:"inbound_chain,omitempty"`
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
	svcs := targets(snap, to)
	if len(svcs) == 0 {
		return nil, fmt.Errorf("no service or pod %q in the mesh model (or the pod backs no service)", to)
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
	e.verdict()
	return e, nil
}

// targets finds what "to" names: a service, or the services a pod backs.
func targets(snap *model.Snapshot, to string) []*model.Service {
	if svc := snap.Service(to); svc != nil {
		return []*model.Service{svc}
	}
	var out []*model.Service
	for _, svc := range snap.Services {
		if slices.ContainsFunc(svc.Endpoints, func(ep model.Endpoint) bool { return ep.Workload == to }) {
			out = append(out, svc)
		}
	}
	return out
}

func side(w *model.Workload, connected map[string]ProxyStatus) Side {
	_, ok := connected[w.Key()]
	return Side{Workload: w.Key(), Identity: w.Identity, Sidecar: w.Meshed, Connected: ok, Mode: string(w.Mode)}
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
			Cluster: translate.ClusterName(svc, p.Port), ClientSecrets: []string{"default", "ROOTCA"}}
		pp.FilterChain = pp.Cluster
		if svc.ClusterIP == "" {
			pp.FilterChain = "outbound-direct|" + fmt.Sprint(p.Port) + "|" + svc.Key() + "|<endpoint>"
		}
		if p.Protocol.IsHTTP() {
			pp.Route = pp.Cluster
		}
		if e.From.Connected {
			pp.ClientIdentity = e.From.Identity
		}
		for id := range ids {
			pp.ExpectedSANs = append(pp.ExpectedSANs, id)
		}
		slices.Sort(pp.ExpectedSANs)
		ready := 0
		for _, ep := range svc.Endpoints {
			if ep.PortName != p.Name {
				continue
			}
			if ep.Ready {
				ready++
			}
			pp.Endpoints = append(pp.Endpoints, e.endpoint(snap, svc, ep, connected))
		}
		if ready == 0 {
			e.find("%s port %d has no ready endpoint: clients get \"no healthy upstream\" (503)", svc.Key(), p.Port)
		}
		e.Ports = append(e.Ports, pp)
	}
}

func (e *Explanation) endpoint(snap *model.Snapshot, svc *model.Service, ep model.Endpoint, connected map[string]ProxyStatus) EndpointPath {
	out := EndpointPath{Address: ep.Address, Port: ep.Port, Ready: ep.Ready, MTLS: ep.Identity != "" && e.From.Connected}
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
	if !slices.ContainsFunc(w.Ports, func(wp model.Port) bool { return wp.Port == ep.Port }) {
		e.find("server %s has no inbound chain for port %d", w.Key(), ep.Port)
	} else {
		out.InboundChain = fmt.Sprintf("inbound|%d|tls", ep.Port)
	}
	if !out.Server.Connected {
		e.find("server %s should have a sidecar but none is connected to this replica: with STRICT, clients see \"upstream connect error ... connection refused/reset\"", w.Key())
	}
	if !e.From.Connected && w.Mode == model.ModeStrict {
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

// verdict sums up: mtls when every endpoint gets mutual TLS, plaintext when
// none does, mixed in between; broken when no endpoint is ready.
func (e *Explanation) verdict() {
	var mtls, plain, ready int
	for _, p := range e.Ports {
		for _, ep := range p.Endpoints {
			if ep.Ready {
				ready++
			}
			if ep.MTLS {
				mtls++
			} else {
				plain++
			}
		}
	}
	switch {
	case ready == 0:
		e.Verdict = "broken"
	case plain == 0:
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

package xds

import (
	"strings"

	"github.com/meshd/meshd/model"
)

// AuthzPath is what the authorization policies selecting a server decide
// for the client on one port.
type AuthzPath struct {
	// Decision is allowed, denied, or limited (allowed for some HTTP
	// requests only: paths, methods, hosts).
	Decision string `json:"decision"`
	Reason   string `json:"reason"`
	// Rules are the deciding rules (<namespace>/<policy>/rule-<i>), as
	// Envoy names them in its logs.
	Rules []string `json:"rules,omitempty"`
	// Policies are those covering the port.
	Policies []string `json:"policies,omitempty"`
	// DryRun says what the dry-run policies would change if enforced.
	DryRun string `json:"dry_run,omitempty"`
}

// authorize evaluates the server's policies for the client as its
// sidecar's RBAC filters would: the client's identity when it has a
// sidecar, none (plaintext) otherwise.
func (e *Explanation) authorize(snap *model.Snapshot, w *model.Workload, svc *model.Service, ep model.Endpoint) *AuthzPath {
	port := model.Port{Port: ep.Port, Protocol: model.ProtocolTCP}
	for _, p := range svc.Ports {
		if p.Name == ep.PortName {
			port.Protocol = p.Protocol
		}
	}
	caller := ""
	if c := snap.Workload(e.From.Workload); c != nil && c.Meshed {
		caller = c.Identity
	}
	d := model.Authorize(w.Policies, port, caller)
	out := &AuthzPath{Decision: "allowed", Reason: d.Reason, Rules: d.Deciding, DryRun: d.DryRun}
	for _, p := range w.Policies {
		if p.AppliesTo(ep.Port) {
			out.Policies = append(out.Policies, p.Key())
		}
	}
	switch {
	case !d.Allowed:
		out.Decision = "denied"
		e.find("%s may not call %s on port %d: %s", e.From.Workload, w.Key(), ep.Port, d.Reason)
	case d.Limited:
		out.Decision = "limited"
	}
	if d.DryRun != "" {
		e.find("dry run on %s port %d: %s", w.Key(), ep.Port, d.DryRun)
	}
	return out
}

// authorizationSummary sums up the endpoints' decisions: allowed, denied,
// limited, or mixed; "" when no endpoint has a sidecar.
func (e *Explanation) authorizationSummary() string {
	seen := map[string]bool{}
	for _, p := range e.Ports {
		for _, ep := range p.Endpoints {
			if ep.Authorization != nil {
				seen[ep.Authorization.Decision] = true
			}
		}
	}
	var ds []string
	for _, d := range []string{"allowed", "limited", "denied"} {
		if seen[d] {
			ds = append(ds, d)
		}
	}
	if len(ds) > 1 {
		return "mixed (" + strings.Join(ds, ", ") + ")"
	}
	return strings.Join(ds, "")
}

package model

import (
	"fmt"
	"slices"
	"strings"
)

// Action is what an authorization policy does with the requests its rules
// match.
type Action string

// Actions. DENY policies are evaluated first and any match refuses; once a
// workload is selected by an ALLOW policy, only what some ALLOW rule matches
// is let through.
const (
	ActionAllow Action = "ALLOW"
	ActionDeny  Action = "DENY"
)

// Policy is an AuthorizationPolicy that was found valid, resolved against
// the trust domain: callers are SPIFFE IDs or SPIFFE ID prefixes.
type Policy struct {
	Namespace, Name string
	Action          Action
	// DryRun: the policy is evaluated and its would-be denials logged and
	// counted, but nothing is refused because of it.
	DryRun bool
	// Ports limits the policy to these workload ports (sorted); empty: all
	// ports.
	Ports []uint32
	// Rules match when any one matches.
	Rules []Rule
}

// Key returns "namespace/name", also the policy's name in Envoy's RBAC
// configuration and logs (with "/rule-<i>" for the rule).
func (p *Policy) Key() string { return p.Namespace + "/" + p.Name }

// RuleName names rule i of the policy as Envoy logs it.
func (p *Policy) RuleName(i int) string { return fmt.Sprintf("%s/rule-%d", p.Key(), i) }

// AppliesTo reports whether the policy covers the port.
func (p *Policy) AppliesTo(port uint32) bool {
	return len(p.Ports) == 0 || slices.Contains(p.Ports, port)
}

// Rule matches a request when its From and To both match.
type Rule struct {
	// From is nil for any caller (also one without a mesh identity).
	From *Source
	// To is nil for any request; only HTTP ports look at it.
	To *Operation
}

// Source is a set of callers: one whose authenticated SPIFFE ID is one of
// Identities or starts with one of Prefixes.
type Source struct {
	Identities []string
	Prefixes   []string
}

// Matches reports whether the SPIFFE ID id (the authenticated peer, "" for
// none) is one of the source's callers.
func (s *Source) Matches(id string) bool {
	if s == nil {
		return true
	}
	if id == "" {
		return false
	}
	return slices.Contains(s.Identities, id) || slices.ContainsFunc(s.Prefixes, func(p string) bool { return strings.HasPrefix(id, p) })
}

// Operation is a set of HTTP requests: every non-empty list must have a
// match.
type Operation struct {
	// Paths match exactly, or by prefix when they end in "*" (the "*"
	// dropped).
	Paths []PathMatch
	// Methods are upper case.
	Methods []string
	// Hosts match the request's authority, without a port, ignoring case.
	Hosts []string
}

// PathMatch is one path condition.
type PathMatch struct {
	Value  string
	Prefix bool
}

func (m PathMatch) String() string {
	if m.Prefix {
		return m.Value + "*"
	}
	return m.Value
}

// Decision is what the policies selecting a workload decide for one caller
// on one port.
type Decision struct {
	// Allowed: the connection or request is let through. With Limited, only
	// the requests the Deciding rules' operations match (ALLOW) or do not
	// match (DENY) are.
	Allowed bool
	// Limited: the decision depends on the HTTP request (paths, methods,
	// hosts).
	Limited bool
	// Reason says in words what decided.
	Reason string
	// Deciding names the rules that decided (policy/rule-<i>), empty for the
	// default.
	Deciding []string
	// DryRun is what enforcing the dry-run policies would change, empty when
	// nothing.
	DryRun string
}

// Authorize evaluates the policies (those selecting a workload) for a caller
// with SPIFFE ID caller ("" for a plaintext one) on a port, as the sidecar's
// RBAC filters do: DENY first, then ALLOW; no policy on the port allows.
// On a TCP port a rule's HTTP conditions cannot be checked and fail closed:
// an ALLOW rule with them matches nothing, a DENY rule matches on its
// callers alone.
func Authorize(policies []*Policy, port Port, caller string) Decision {
	var enforced, dry []*Policy
	for _, p := range policies {
		if !p.AppliesTo(port.Port) {
			continue
		}
		if p.DryRun {
			dry = append(dry, p)
		} else {
			enforced = append(enforced, p)
		}
	}
	http := port.Protocol.IsHTTP()
	d := decide(enforced, caller, http)
	if len(dry) > 0 {
		if would := decide(append(slices.Clone(enforced), dry...), caller, http); would.Allowed != d.Allowed || would.Limited != d.Limited {
			d.DryRun = "with the dry-run policies enforced: " + would.Reason
		}
	}
	return d
}

func decide(policies []*Policy, caller string, http bool) Decision {
	denyAll, denySome := matching(policies, ActionDeny, caller, http)
	if len(denyAll) > 0 {
		return Decision{Reason: "denied by " + strings.Join(denyAll, ", "), Deciding: denyAll}
	}
	var allowPolicies []string
	for _, p := range policies {
		if p.Action == ActionAllow {
			allowPolicies = append(allowPolicies, p.Key())
		}
	}
	hasAllow := len(allowPolicies) > 0
	allowAll, allowSome := matching(policies, ActionAllow, caller, http)
	switch {
	case hasAllow && len(allowAll) == 0 && len(allowSome) == 0:
		return Decision{Reason: "denied: no rule of the ALLOW policies " + strings.Join(allowPolicies, ", ") + " (which select the workload on this port) matches this caller"}
	case hasAllow && len(allowAll) == 0:
		return Decision{Allowed: true, Limited: true, Deciding: append(allowSome, denySome...),
			Reason: "allowed only for the requests of " + strings.Join(allowSome, ", ") + denied(denySome)}
	case len(allowAll) > 0:
		return Decision{Allowed: true, Limited: len(denySome) > 0, Deciding: append(allowAll, denySome...),
			Reason: "allowed by " + strings.Join(allowAll, ", ") + denied(denySome)}
	}
	return Decision{Allowed: true, Limited: len(denySome) > 0, Deciding: denySome,
		Reason: "allowed: no ALLOW policy selects the workload on this port" + denied(denySome)}
}

func denied(rules []string) string {
	if len(rules) == 0 {
		return ""
	}
	return "; except the requests of " + strings.Join(rules, ", ") + " (denied)"
}

// matching returns the rules of the policies with the action that match the
// caller: those that match every request of it, and those limited to some
// HTTP requests (on an HTTP port).
func matching(policies []*Policy, action Action, caller string, http bool) (all, some []string) {
	for _, p := range policies {
		if p.Action != action {
			continue
		}
		for i, r := range p.Rules {
			if !r.From.Matches(caller) {
				continue
			}
			switch {
			case r.To == nil || !http && action == ActionDeny:
				all = append(all, p.RuleName(i))
			case http:
				some = append(some, p.RuleName(i))
			}
		}
	}
	return all, some
}

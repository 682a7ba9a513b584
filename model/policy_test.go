package model_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/meshd/meshd/model"
)

const (
	client  = "spiffe://cluster.local/ns/shop/sa/frontend"
	other   = "spiffe://cluster.local/ns/shop/sa/other"
	sandbox = "spiffe://cluster.local/ns/sandbox-1/sa/x"
)

var (
	httpPort = model.Port{Port: 8080, Protocol: model.ProtocolHTTP}
	tcpPort  = model.Port{Port: 9090, Protocol: model.ProtocolTCP}
)

func policy(name string, action model.Action, dry bool, ports []uint32, rules ...model.Rule) *model.Policy {
	return &model.Policy{Namespace: "shop", Name: name, Action: action, DryRun: dry, Ports: ports, Rules: rules}
}

func from(ids ...string) *model.Source { return &model.Source{Identities: ids} }

func TestAuthorize(t *testing.T) {
	allowClient := policy("allow", model.ActionAllow, false, nil, model.Rule{From: from(client)})
	allowGET := policy("get", model.ActionAllow, false, nil, model.Rule{From: from(other), To: &model.Operation{Methods: []string{"GET"}}})
	denySandbox := policy("deny", model.ActionDeny, false, nil, model.Rule{From: &model.Source{Prefixes: []string{"spiffe://cluster.local/ns/sandbox-"}}})
	denyClient := policy("deny-client", model.ActionDeny, false, nil, model.Rule{From: from(client)})
	denyClientDry := policy("deny-client", model.ActionDeny, true, nil, model.Rule{From: from(client)})
	denyPOST := policy("no-post", model.ActionDeny, false, nil, model.Rule{From: from(client), To: &model.Operation{Methods: []string{"POST"}}})
	onlyTCP := policy("tcp-only", model.ActionAllow, false, []uint32{9090}, model.Rule{From: from(client)})
	for name, tc := range map[string]struct {
		policies       []*model.Policy
		port           model.Port
		caller         string
		allowed, lim   bool
		deciding       []string
		reason, dryRun string
	}{
		"no policy allows":                    {port: httpPort, caller: other, allowed: true, reason: "no ALLOW policy"},
		"no policy allows plaintext":          {port: tcpPort, caller: "", allowed: true},
		"allowed by rule":                     {policies: []*model.Policy{allowClient}, port: httpPort, caller: client, allowed: true, deciding: []string{"shop/allow/rule-0"}},
		"default deny under ALLOW":            {policies: []*model.Policy{allowClient}, port: httpPort, caller: other, reason: "shop/allow"},
		"plaintext under ALLOW":               {policies: []*model.Policy{allowClient}, port: tcpPort, caller: ""},
		"DENY over ALLOW":                     {policies: []*model.Policy{allowClient, denyClient}, port: tcpPort, caller: client, deciding: []string{"shop/deny-client/rule-0"}},
		"DENY by namespace prefix":            {policies: []*model.Policy{denySandbox}, port: httpPort, caller: sandbox, deciding: []string{"shop/deny/rule-0"}},
		"DENY leaves others":                  {policies: []*model.Policy{denySandbox}, port: httpPort, caller: other, allowed: true},
		"dry-run DENY denies nothing":         {policies: []*model.Policy{allowClient, denyClientDry}, port: httpPort, caller: client, allowed: true, dryRun: "denied by shop/deny-client/rule-0"},
		"HTTP rule limits on HTTP":            {policies: []*model.Policy{allowGET}, port: httpPort, caller: other, allowed: true, lim: true, deciding: []string{"shop/get/rule-0"}},
		"HTTP ALLOW rule fails closed on TCP": {policies: []*model.Policy{allowGET}, port: tcpPort, caller: other},
		"HTTP DENY rule limits on HTTP":       {policies: []*model.Policy{denyPOST}, port: httpPort, caller: client, allowed: true, lim: true, deciding: []string{"shop/no-post/rule-0"}},
		"HTTP DENY rule denies all on TCP":    {policies: []*model.Policy{denyPOST}, port: tcpPort, caller: client, deciding: []string{"shop/no-post/rule-0"}},
		"policy of another port":              {policies: []*model.Policy{onlyTCP}, port: httpPort, caller: other, allowed: true},
		"policy of this port":                 {policies: []*model.Policy{onlyTCP}, port: tcpPort, caller: other},
	} {
		t.Run(name, func(t *testing.T) {
			d := model.Authorize(tc.policies, tc.port, tc.caller)
			if d.Allowed != tc.allowed || d.Limited != tc.lim {
				t.Errorf("allowed %v limited %v (%s), want %v %v", d.Allowed, d.Limited, d.Reason, tc.allowed, tc.lim)
			}
			if tc.deciding != nil && !slices.Equal(d.Deciding, tc.deciding) {
				t.Errorf("deciding %v, want %v", d.Deciding, tc.deciding)
			}
			if !strings.Contains(d.Reason, tc.reason) || !strings.Contains(d.DryRun, tc.dryRun) || (tc.dryRun == "") != (d.DryRun == "") {
				t.Errorf("reason %q dry run %q, want them to hold %q and %q", d.Reason, d.DryRun, tc.reason, tc.dryRun)
			}
		})
	}
}

func TestSourceMatches(t *testing.T) {
	s := &model.Source{Identities: []string{client}, Prefixes: []string{"spiffe://cluster.local/ns/team-"}}
	for id, want := range map[string]bool{
		client: true, other: false, "": false,
		"spiffe://cluster.local/ns/team-a/sa/x": true, "spiffe://cluster.local/ns/teams/sa/x": false,
	} {
		if got := s.Matches(id); got != want {
			t.Errorf("Matches(%q) = %v, want %v", id, got, want)
		}
	}
	var any *model.Source
	if !any.Matches("") {
		t.Error("a nil source (any caller) does not match a plaintext caller")
	}
}

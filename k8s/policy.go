package k8s

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/meshd/meshd/model"
)

// The AuthorizationPolicy custom resource (deploy/base/authorizationpolicy.yaml
// holds its CRD and schema). meshd reads it as unstructured objects and
// checks it with its own code (PolicyFromObject), so it needs no generated
// client.
const (
	PolicyGroup   = "meshd.io"
	PolicyVersion = "v1alpha1"
	PolicyKind    = "AuthorizationPolicy"
	// Problem reasons for policies. PolicyInvalid: the policy is not
	// enforced at all. PolicyHTTPRuleOnTCPPort: enforced, but a rule's HTTP
	// conditions cannot be checked on a TCP port and fail closed there.
	PolicyInvalid           = "InvalidAuthorizationPolicy"
	PolicyHTTPRuleOnTCPPort = "HTTPRuleOnTCPPort"
)

// PolicyResource is the policies' resource, for the dynamic client.
var PolicyResource = schema.GroupVersionResource{Group: PolicyGroup, Version: PolicyVersion, Resource: "authorizationpolicies"}

// policyGVK is the policies' kind.
var policyGVK = schema.GroupVersionKind{Group: PolicyGroup, Version: PolicyVersion, Kind: PolicyKind}

// Bounds on one policy, so that what a user writes has a bounded cost in
// every sidecar it selects (the CRD's schema says the same).
const (
	maxPolicyRules = 64
	maxPolicyList  = 256
)

// policySpec is the spec as users write it.
type policySpec struct {
	Selector *metav1.LabelSelector `json:"selector"`
	Ports    []int64               `json:"ports,omitempty"`
	Action   string                `json:"action"`
	DryRun   bool                  `json:"dryRun,omitempty"`
	Rules    []ruleSpec            `json:"rules"`
}

type ruleSpec struct {
	From *fromSpec `json:"from,omitempty"`
	To   *toSpec   `json:"to,omitempty"`
}

type fromSpec struct {
	Identities      []string `json:"identities,omitempty"`
	ServiceAccounts []string `json:"serviceAccounts,omitempty"`
	Namespaces      []string `json:"namespaces,omitempty"`
}

type toSpec struct {
	Paths   []string `json:"paths,omitempty"`
	Methods []string `json:"methods,omitempty"`
	Hosts   []string `json:"hosts,omitempty"`
}

// PolicyFromObject checks an AuthorizationPolicy and converts it for the
// trust domain, with the label selector that picks its workloads. Every
// problem found is returned (joined); the policy is then not enforced.
func PolicyFromObject(u *unstructured.Unstructured, trustDomain string) (*model.Policy, labels.Selector, error) {
	raw, ok := u.Object["spec"]
	if !ok {
		return nil, nil, errors.New("spec is missing")
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("spec: %w", err)
	}
	var spec policySpec
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return nil, nil, fmt.Errorf("spec: %w", err)
	}
	v := &policyChecker{trustDomain: trustDomain}
	p := &model.Policy{Namespace: u.GetNamespace(), Name: u.GetName(), Action: model.Action(spec.Action), DryRun: spec.DryRun}
	// Its name is in its rules' names and the sidecars' logs.
	if err := validNames(PolicyKind, u); err != nil {
		v.fail("%v", err)
	}
	if p.Action != model.ActionAllow && p.Action != model.ActionDeny {
		v.fail("spec.action %q is neither ALLOW nor DENY", spec.Action)
	}
	sel := v.selector(spec.Selector)
	p.Ports = v.ports(spec.Ports)
	switch {
	case len(spec.Rules) == 0:
		v.fail("spec.rules is empty: give at least one rule (a rule {} matches every caller and request)")
	case len(spec.Rules) > maxPolicyRules:
		v.fail("spec.rules has %d rules, more than %d", len(spec.Rules), maxPolicyRules)
	}
	for i, r := range spec.Rules {
		p.Rules = append(p.Rules, v.rule(fmt.Sprintf("spec.rules[%d]", i), r))
	}
	if err := errors.Join(v.errs...); err != nil {
		return nil, nil, err
	}
	return p, sel, nil
}

type policyChecker struct {
	trustDomain string
	errs        []error
}

func (v *policyChecker) fail(format string, args ...any) {
	v.errs = append(v.errs, fmt.Errorf(format, args...))
}

// selector converts the label selector and refuses one that can never
// match a pod.
func (v *policyChecker) selector(s *metav1.LabelSelector) labels.Selector {
	if s == nil {
		v.fail("spec.selector is missing: give the pods' labels, or {} for every pod of the namespace")
		return nil
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		v.fail("spec.selector: %v", err)
		return nil
	}
	for _, e := range s.MatchExpressions {
		want, fixed := s.MatchLabels[e.Key]
		never := false
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			never = fixed && !slices.Contains(e.Values, want)
		case metav1.LabelSelectorOpNotIn:
			never = fixed && slices.Contains(e.Values, want)
		case metav1.LabelSelectorOpDoesNotExist:
			never = fixed
		}
		if never {
			v.fail("spec.selector can never match: matchLabels %s=%s contradicts the expression %s %s %v", e.Key, want, e.Key, e.Operator, e.Values)
		}
	}
	return sel
}

func (v *policyChecker) ports(in []int64) []uint32 {
	var out []uint32
	for _, p := range in {
		if p < 1 || p > 65535 {
			v.fail("spec.ports: %d is not a port (1-65535)", p)
			continue
		}
		out = append(out, uint32(p))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (v *policyChecker) rule(at string, r ruleSpec) model.Rule {
	var out model.Rule
	if r.From != nil {
		out.From = v.from(at+".from", r.From)
	}
	if r.To != nil {
		out.To = v.to(at+".to", r.To)
	}
	return out
}

func (v *policyChecker) list(at string, items []string) {
	if len(items) > maxPolicyList {
		v.fail("%s has %d entries, more than %d", at, len(items), maxPolicyList)
	}
}

func (v *policyChecker) from(at string, f *fromSpec) *model.Source {
	if len(f.Identities)+len(f.ServiceAccounts)+len(f.Namespaces) == 0 {
		v.fail("%s names no caller: leave from out for any caller", at)
	}
	v.list(at+".identities", f.Identities)
	v.list(at+".serviceAccounts", f.ServiceAccounts)
	v.list(at+".namespaces", f.Namespaces)
	s := &model.Source{}
	for _, id := range f.Identities {
		if err := v.spiffeID(id); err != nil {
			v.fail("%s.identities: %q: %v", at, id, err)
			continue
		}
		s.Identities = append(s.Identities, id)
	}
	for _, sa := range f.ServiceAccounts {
		ns, name, ok := strings.Cut(sa, "/")
		if !ok || len(validation.IsDNS1123Label(ns)) > 0 || len(validation.IsDNS1123Subdomain(name)) > 0 {
			v.fail("%s.serviceAccounts: %q is not <namespace>/<service account>", at, sa)
			continue
		}
		s.Identities = append(s.Identities, model.SPIFFEID(v.trustDomain, ns, name))
	}
	for _, ns := range f.Namespaces {
		prefix, isPrefix := strings.CutSuffix(ns, "*")
		switch {
		case isPrefix && (prefix == "" || validNamespacePrefix(prefix)):
			s.Prefixes = append(s.Prefixes, "spiffe://"+v.trustDomain+"/ns/"+prefix)
		case !isPrefix && len(validation.IsDNS1123Label(ns)) == 0:
			s.Prefixes = append(s.Prefixes, "spiffe://"+v.trustDomain+"/ns/"+ns+"/sa/")
		default:
			v.fail("%s.namespaces: %q is neither a namespace nor a prefix ending in *", at, ns)
		}
	}
	slices.Sort(s.Identities)
	slices.Sort(s.Prefixes)
	s.Identities, s.Prefixes = slices.Compact(s.Identities), slices.Compact(s.Prefixes)
	return s
}

var namespacePrefix = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*)?$`)

func validNamespacePrefix(p string) bool { return len(p) < 63 && namespacePrefix.MatchString(p) }

// spiffeID accepts spiffe://<trust domain>/<path>: an identity of another
// trust domain could never present a certificate the sidecars accept.
func (v *policyChecker) spiffeID(id string) error {
	u, err := url.Parse(id)
	switch {
	case err != nil:
		return err
	case u.Scheme != "spiffe" || u.Host == "" || u.User != nil || u.Port() != "":
		return errors.New("not a SPIFFE ID (spiffe://<trust domain>/<path>)")
	case u.RawQuery != "" || u.Fragment != "" || strings.Contains(id, "?") || strings.Contains(id, "#"):
		return errors.New("a SPIFFE ID has no query or fragment")
	case u.Path == "" || u.Path == "/" || strings.HasSuffix(u.Path, "/") || strings.Contains(u.Path, "//") ||
		slices.Contains(strings.Split(u.Path, "/"), ".") || slices.Contains(strings.Split(u.Path, "/"), ".."):
		return errors.New("the path must be non-empty, without empty, . or .. segments")
	case u.Host != v.trustDomain:
		return fmt.Errorf("trust domain %s is not the mesh's (%s): no such caller can authenticate", u.Host, v.trustDomain)
	}
	return nil
}

var methodToken = regexp.MustCompile(`^[A-Z]+$`)

func (v *policyChecker) to(at string, t *toSpec) *model.Operation {
	if len(t.Paths)+len(t.Methods)+len(t.Hosts) == 0 {
		v.fail("%s names no request: leave to out for any request", at)
	}
	v.list(at+".paths", t.Paths)
	v.list(at+".methods", t.Methods)
	v.list(at+".hosts", t.Hosts)
	op := &model.Operation{}
	for _, p := range t.Paths {
		value, prefix := strings.CutSuffix(p, "*")
		if !strings.HasPrefix(value, "/") || strings.ContainsAny(value, "*?# ") {
			v.fail("%s.paths: %q is not a path (/exact, or /prefix* with * only at the end)", at, p)
			continue
		}
		op.Paths = append(op.Paths, model.PathMatch{Value: value, Prefix: prefix})
	}
	for _, m := range t.Methods {
		if !methodToken.MatchString(m) {
			v.fail("%s.methods: %q is not an upper-case HTTP method", at, m)
			continue
		}
		op.Methods = append(op.Methods, m)
	}
	for _, h := range t.Hosts {
		if errs := validation.IsDNS1123Subdomain(strings.ToLower(h)); len(errs) > 0 {
			v.fail("%s.hosts: %q is not a host name (without port): %s", at, h, strings.Join(errs, "; "))
			continue
		}
		op.Hosts = append(op.Hosts, strings.ToLower(h))
	}
	return op
}

// policyEntry is an AuthorizationPolicy object as converted: the policy
// and its selector, or why it is not enforced.
type policyEntry struct {
	obj     *unstructured.Unstructured
	policy  *model.Policy
	sel     labels.Selector
	problem *Problem
	round   uint64
}

func newPolicyEntry(u *unstructured.Unstructured, trustDomain string) *policyEntry {
	e := &policyEntry{obj: u}
	p, sel, err := PolicyFromObject(u, trustDomain)
	if err != nil {
		e.problem = &Problem{Kind: PolicyKind, Namespace: u.GetNamespace(), Name: u.GetName(), Reason: PolicyInvalid,
			Message: "not enforced: " + strings.ReplaceAll(err.Error(), "\n", "; "), UID: string(u.GetUID())}
		return e
	}
	e.policy, e.sel = p, sel
	return e
}

// selecting returns the valid policies of entries (a namespace's) that
// select pod, sorted by Key.
func selecting(entries []*policyEntry, pod *corev1.Pod) []*model.Policy {
	var out []*model.Policy
	for _, e := range entries {
		if e.policy != nil && e.sel.Matches(labels.Set(pod.Labels)) {
			out = append(out, e.policy)
		}
	}
	slices.SortFunc(out, func(a, b *model.Policy) int { return cmp.Compare(a.Key(), b.Key()) })
	return out
}

// onTCP is an HTTP condition of a policy that falls on a TCP port of a
// workload it selects; reported once per policy and port.
type onTCP struct {
	policy *model.Policy
	port   uint32
	// workload is the key of the workload it was found on.
	workload string
}

// httpRulesOnTCP finds w's policies whose HTTP conditions fall on its TCP
// ports.
func httpRulesOnTCP(w *model.Workload) []onTCP {
	var out []onTCP
	for _, p := range w.Policies {
		if !slices.ContainsFunc(p.Rules, func(r model.Rule) bool { return r.To != nil }) {
			continue
		}
		for _, port := range w.Ports {
			if !port.Protocol.IsHTTP() && p.AppliesTo(port.Port) {
				out = append(out, onTCP{policy: p, port: port.Port, workload: w.Key()})
			}
		}
	}
	return out
}

// problem reports t; uid is the policy's.
func (t onTCP) problem(uid string) Problem {
	p := t.policy
	effect := "its ALLOW rules with paths, methods or hosts match nothing there"
	if p.Action == model.ActionDeny {
		effect = "its DENY rules with paths, methods or hosts deny every request of their callers there"
	}
	return Problem{Kind: PolicyKind, Namespace: p.Namespace, Name: p.Name, Reason: PolicyHTTPRuleOnTCPPort, UID: uid,
		Message: fmt.Sprintf("port %d of %s is TCP, where HTTP conditions cannot be checked: %s (name the port http-* or set appProtocol, or limit the policy with ports)", t.port, t.workload, effect)}
}

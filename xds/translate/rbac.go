package translate

import (
	"fmt"
	"strings"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	celv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/model"
)

// Authorization: the policies selecting a workload become, per port, up to
// two RBAC configurations: first one with action DENY (the enforced DENY
// rules; the dry-run DENY rules as its shadow rules), then one with action
// ALLOW (the enforced ALLOW rules, present as soon as one enforced ALLOW
// policy covers the port, so that everything else is refused; the enforced
// and dry-run ALLOW rules together as its shadow rules). On TCP ports they
// are network RBAC filters in front of tcp_proxy (a policy change changes
// the chain: its connections are drained); on HTTP ports the two HTTP RBAC
// filters every inbound HTTP chain has, configured by the port's route
// (RDS). Principals are the authenticated peer certificate's URI SAN,
// never a header. Each Envoy policy is one rule, named
// <namespace>/<policy>/rule-<i>, which is what Envoy reports as the
// deciding policy. A TCP chain of a port no policy covers has no RBAC
// filter; an HTTP chain's filters then let everything through.
//
// Envoy's names for what the filters record: the prefixes below, in stats
// (HTTP: http.<chain>.rbac.<prefix>.denied and
// <prefix>dry_run_.shadow_denied; TCP: <prefix><port>.rbac.denied) and in
// dynamic metadata (HTTP: <prefix>enforced_engine_result; both:
// <prefix>dry_run_shadow_engine_result; "denied" when refused or when the
// dry run would refuse). The network filter records an enforced refusal
// only in the connection termination details.
const (
	RBACDenyPrefix  = "meshd_deny_"
	RBACAllowPrefix = "meshd_allow_"
	rbacDryRun      = "dry_run_"
	rbacHTTPName    = "envoy.filters.http.rbac"
	rbacNetworkName = "envoy.filters.network.rbac"
)

// authz is the RBAC configuration of one port: per action the enforced
// rules and the shadow (dry-run) rules, nil where there is no filter.
type authz struct {
	deny, denyShadow   *rbacv3.RBAC
	allow, allowShadow *rbacv3.RBAC
	// policies are the keys of the policies covering the port.
	policies []string
}

// portAuthz builds a port's RBAC rules from the workload's policies; nil
// when no policy covers the port.
func portAuthz(w *model.Workload, p model.Port) *authz {
	return authzOf(w, p.Protocol.IsHTTP(), func(pol *model.Policy) bool { return pol.AppliesTo(p.Port) })
}

// authzOf builds RBAC rules from the workload's policies that apply; nil
// when none does.
func authzOf(w *model.Workload, http bool, applies func(*model.Policy) bool) *authz {
	a := &authz{}
	var allowDry bool
	for _, pol := range w.Policies {
		if !applies(pol) {
			continue
		}
		a.policies = append(a.policies, pol.Key())
		switch {
		case pol.Action == model.ActionDeny && !pol.DryRun:
			a.deny = addRules(a.deny, rbacv3.RBAC_DENY, pol, http)
		case pol.Action == model.ActionDeny:
			a.denyShadow = addRules(a.denyShadow, rbacv3.RBAC_DENY, pol, http)
		case !pol.DryRun:
			a.allow = addRules(a.allow, rbacv3.RBAC_ALLOW, pol, http)
			a.allowShadow = addRules(a.allowShadow, rbacv3.RBAC_ALLOW, pol, http)
		default:
			allowDry = true
			a.allowShadow = addRules(a.allowShadow, rbacv3.RBAC_ALLOW, pol, http)
		}
	}
	if len(a.policies) == 0 {
		return nil
	}
	if !allowDry {
		a.allowShadow = nil // the same as the enforced rules: nothing to report
	}
	return a
}

// addRules adds a policy's rules to r (made with the action if nil). On a
// TCP port an ALLOW rule with HTTP conditions matches nothing and is left
// out; a DENY rule with them matches on its callers alone.
func addRules(r *rbacv3.RBAC, action rbacv3.RBAC_Action, pol *model.Policy, http bool) *rbacv3.RBAC {
	if r == nil {
		r = &rbacv3.RBAC{Action: action, Policies: map[string]*rbacv3.Policy{}}
	}
	for i, rule := range pol.Rules {
		if rule.To != nil && !http && action == rbacv3.RBAC_ALLOW {
			continue
		}
		perm := anyPermission()
		if rule.To != nil && http {
			perm = operationPermission(rule.To)
		}
		r.Policies[pol.RuleName(i)] = &rbacv3.Policy{Permissions: []*rbacv3.Permission{perm}, Principals: []*rbacv3.Principal{sourcePrincipal(rule.From)}}
	}
	return r
}

func anyPermission() *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
}

// sourcePrincipal matches the callers of a source by the URI SAN of their
// verified certificate; a nil source matches any caller.
func sourcePrincipal(s *model.Source) *rbacv3.Principal {
	if s == nil {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
	}
	var ids []*rbacv3.Principal
	for _, id := range s.Identities {
		ids = append(ids, authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}}))
	}
	for _, p := range s.Prefixes {
		ids = append(ids, authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: p}}))
	}
	if len(ids) == 1 {
		return ids[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ids}}}
}

func authenticated(m *matcherv3.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
}

// operationPermission matches the requests of an operation: each non-empty
// list must have a match.
func operationPermission(op *model.Operation) *rbacv3.Permission {
	var all []*rbacv3.Permission
	if len(op.Paths) > 0 {
		var any []*rbacv3.Permission
		for _, p := range op.Paths {
			m := &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: p.Value}}
			if p.Prefix {
				m = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: p.Value}}
			}
			any = append(any, &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
				Rule: &matcherv3.PathMatcher_Path{Path: m},
			}}})
		}
		all = append(all, orPermissions(any))
	}
	if len(op.Methods) > 0 {
		var any []*rbacv3.Permission
		for _, m := range op.Methods {
			any = append(any, headerPermission(":method", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m}}))
		}
		all = append(all, orPermissions(any))
	}
	if len(op.Hosts) > 0 {
		var any []*rbacv3.Permission
		for _, h := range op.Hosts {
			any = append(any,
				headerPermission(":authority", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: h}, IgnoreCase: true}),
				headerPermission(":authority", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: h + ":"}, IgnoreCase: true}))
		}
		all = append(all, orPermissions(any))
	}
	if len(all) == 1 {
		return all[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: all}}}
}

func orPermissions(ps []*rbacv3.Permission) *rbacv3.Permission {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func headerPermission(name string, m *matcherv3.StringMatcher) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: &routev3.HeaderMatcher{
		Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: m},
	}}}
}

// networkRBAC returns the network RBAC filters of a TCP port's chain, DENY
// first (none when no policy covers the port, none for an HTTP port).
func networkRBAC(a *authz, p model.Port) []*listenerv3.Filter {
	if a == nil || p.Protocol.IsHTTP() {
		return nil
	}
	var out []*listenerv3.Filter
	add := func(rules, shadow *rbacv3.RBAC, prefix string) {
		if rules == nil && shadow == nil {
			return
		}
		r := &rbacnetv3.RBAC{Rules: rules, ShadowRules: shadow, StatPrefix: fmt.Sprintf("%s%d.", prefix, p.Port)}
		if shadow != nil {
			r.ShadowRulesStatPrefix = prefix + rbacDryRun
		}
		out = append(out, &listenerv3.Filter{Name: rbacNetworkName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(r)}})
	}
	add(a.deny, a.denyShadow, RBACDenyPrefix)
	add(a.allow, a.allowShadow, RBACAllowPrefix)
	return out
}

// The two HTTP RBAC filters every inbound HTTP chain has, DENY first.
// Their own configuration lets everything through; the proxy's inbound
// route (RDS) configures them per route (RBACPerRoute). So a policy change
// is a route update: Envoy applies it to the next request, on established
// connections too, and the listener (its chains, their connections) stays
// as it was.
const (
	authzDenyFilter  = "meshd.authz.deny"
	authzAllowFilter = "meshd.authz.allow"
	// authzMetadata is the route metadata namespace naming the policies
	// covering the port (key "policies"), for the authz log line.
	authzMetadata = "meshd.authz"
)

func httpRBACFilters() []*hcmv3.HttpFilter {
	filter := func(name, prefix string) *hcmv3.HttpFilter {
		return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&rbachttpv3.RBAC{
			RulesStatPrefix: prefix, ShadowRulesStatPrefix: prefix + rbacDryRun,
		})}}
	}
	return []*hcmv3.HttpFilter{filter(authzDenyFilter, RBACDenyPrefix), filter(authzAllowFilter, RBACAllowPrefix)}
}

// InboundRouteName names the proxy's own route configuration of an HTTP
// port: inbound|<port>.
func InboundRouteName(p model.Port) string { return fmt.Sprintf("inbound|%d", p.Port) }

// inboundRDS points an inbound HTTP chain at the port's route.
func inboundRDS(p model.Port) *hcmv3.HttpConnectionManager_Rds {
	return &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: adsConfig(), RouteConfigName: InboundRouteName(p)}}
}

// inboundRoute is an HTTP port's route to the app, with the port's RBAC
// rules and the names of the policies covering it.
func inboundRoute(w *model.Workload, p model.Port) *routev3.RouteConfiguration {
	cluster := InboundClusterName(p)
	if w.NoInterception {
		cluster = localClusterName(p)
	}
	route := &routev3.Route{
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
			Timeout:          durationpb.New(0),
		}},
	}
	if a := portAuthz(w, p); a != nil {
		route.TypedPerFilterConfig = map[string]*anypb.Any{}
		if a.deny != nil || a.denyShadow != nil {
			route.TypedPerFilterConfig[authzDenyFilter] = mustAny(&rbachttpv3.RBACPerRoute{Rbac: &rbachttpv3.RBAC{
				Rules: a.deny, ShadowRules: a.denyShadow, RulesStatPrefix: RBACDenyPrefix, ShadowRulesStatPrefix: RBACDenyPrefix + rbacDryRun,
			}})
		}
		if a.allow != nil || a.allowShadow != nil {
			route.TypedPerFilterConfig[authzAllowFilter] = mustAny(&rbachttpv3.RBACPerRoute{Rbac: &rbachttpv3.RBAC{
				Rules: a.allow, ShadowRules: a.allowShadow, RulesStatPrefix: RBACAllowPrefix, ShadowRulesStatPrefix: RBACAllowPrefix + rbacDryRun,
			}})
		}
		route.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			authzMetadata: mustStruct(map[string]any{"policies": strings.Join(a.policies, ",")}),
		}}
	}
	return &routev3.RouteConfiguration{
		Name:         InboundRouteName(p),
		VirtualHosts: []*routev3.VirtualHost{{Name: cluster, Domains: []string{"*"}, Routes: []*routev3.Route{route}}},
	}
}

// inboundRoutes are the routes of the workload's HTTP ports.
func inboundRoutes(w *model.Workload) []types.Resource {
	var out []types.Resource
	for _, p := range w.Ports {
		if p.Protocol.IsHTTP() {
			out = append(out, inboundRoute(w, p))
		}
	}
	return out
}

// authzLogFormat is the line a sidecar writes for each connection or
// request its RBAC filters refused or would refuse in a dry run: the
// caller's identity, the port, what Envoy recorded (the deciding rule in
// details and, for dry runs, in the metadata) and the policies covering the
// port.
const authzLogFormat = "[meshd authz] pod=%s port=%%DOWNSTREAM_LOCAL_PORT%% peer=%%DOWNSTREAM_PEER_URI_SAN%% code=%%RESPONSE_CODE%% " +
	"details=%s rbac=%%DYNAMIC_METADATA(%s)%% policies=%s\n"

// authzHTTPLog logs what an HTTP chain's RBAC filters refused or would
// refuse. It is the same whatever the policies (they are named by the
// route's metadata), so the listener does not change with them.
func authzHTTPLog(w *model.Workload) []*accesslogv3.AccessLog {
	var denied []*accesslogv3.AccessLogFilter
	for _, key := range []string{
		RBACDenyPrefix + "enforced_engine_result", RBACDenyPrefix + rbacDryRun + "shadow_engine_result",
		RBACAllowPrefix + "enforced_engine_result", RBACAllowPrefix + rbacDryRun + "shadow_engine_result",
	} {
		denied = append(denied, metadataIs(rbacHTTPName, key, "denied"))
	}
	filter := &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_OrFilter{OrFilter: &accesslogv3.OrFilter{Filters: denied}}}
	format := fmt.Sprintf(authzLogFormat, w.Key(), "%RESPONSE_CODE_DETAILS%", rbacHTTPName, "%METADATA(ROUTE:"+authzMetadata+":policies)%")
	return []*accesslogv3.AccessLog{filteredStdoutLog(format, filter)}
}

// authzTCPLog logs what a TCP chain's RBAC filters refused (the network
// filter records that in the termination details only) or would refuse
// (shadow metadata); nothing without policies.
func authzTCPLog(w *model.Workload, a *authz) []*accesslogv3.AccessLog {
	if a == nil {
		return nil
	}
	expr := []string{"connection.termination_details.startsWith('rbac_access_denied')"}
	for _, prefix := range []string{RBACDenyPrefix, RBACAllowPrefix} {
		expr = append(expr, fmt.Sprintf("metadata.filter_metadata['%s']['%s%sshadow_engine_result'] == 'denied'", rbacNetworkName, prefix, rbacDryRun))
	}
	filter := &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ExtensionFilter{ExtensionFilter: &accesslogv3.ExtensionFilter{
		Name:       "envoy.access_loggers.extension_filters.cel",
		ConfigType: &accesslogv3.ExtensionFilter_TypedConfig{TypedConfig: mustAny(&celv3.ExpressionFilter{Expression: strings.Join(expr, " || ")})},
	}}}
	format := fmt.Sprintf(authzLogFormat, w.Key(), "%CONNECTION_TERMINATION_DETAILS%", rbacNetworkName, strings.Join(a.policies, ","))
	return []*accesslogv3.AccessLog{filteredStdoutLog(format, filter)}
}

func filteredStdoutLog(format string, filter *accesslogv3.AccessLogFilter) *accesslogv3.AccessLog {
	return &accesslogv3.AccessLog{
		Name:   "envoy.access_loggers.stdout",
		Filter: filter,
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(&streamv3.StdoutAccessLog{
			AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
				Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
					Specifier: &corev3.DataSource_InlineString{InlineString: format},
				}},
			}},
		})},
	}
}

func metadataIs(ns, key, value string) *accesslogv3.AccessLogFilter {
	return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_MetadataFilter{MetadataFilter: &accesslogv3.MetadataFilter{
		MatchIfKeyNotFound: wrapperspb.Bool(false),
		Matcher: &matcherv3.MetadataMatcher{
			Filter: ns,
			Path:   []*matcherv3.MetadataMatcher_PathSegment{{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: key}}},
			Value: &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value},
			}}},
		},
	}}}
}

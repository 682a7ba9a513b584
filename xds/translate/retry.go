package translate

import (
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Retries are what a pod going away costs the requests under way, and
// meshd retries only what is safe to retry.
//
// Every method, POST included, is retried when the request never reached
// an application:
//   - the client sidecar could not connect to the server sidecar (also a
//     handshake refused for a wrong identity), or the stream was refused or
//     reset before any of the request was sent;
//   - the server sidecar answered that its app refused the connection (a
//     pod shutting down whose endpoint is still in the client's view): it
//     marks that reply of its own with UnreachableHeader.
//
// Idempotent methods (GET, HEAD, OPTIONS) are retried also when the request
// may have reached the app but got no answer: the connection to the server
// sidecar was reset, or the server sidecar's app closed the connection
// before answering (an app that stops at SIGTERM without finishing its
// requests), which it marks with ResetHeader.
//
// A retry goes to another endpoint where one exists, up to numRetries
// times.
const (
	// UnreachableHeader marks an inbound sidecar's own reply when the app
	// could not be reached at all; the value is Envoy's response flags.
	UnreachableHeader = "x-meshd-app-unreachable"
	// ResetHeader marks an inbound sidecar's own reply when the app closed
	// the connection before answering.
	ResetHeader     = "x-meshd-app-reset"
	retryOnAny      = "connect-failure,refused-stream,reset-before-request,retriable-headers"
	retryIdempotent = "connect-failure,refused-stream,reset,retriable-headers"
	// retries beyond the first attempt, each on another endpoint: a
	// scale-down that removes several endpoints at once (6 -> 2 on the real
	// node, with 3 retries 2 of 6,000 requests tried only leaving pods)
	// still finds a live one.
	numRetries = 5
)

// outboundRoutes sends every request of a service port to its cluster:
// idempotent methods with the wider retry policy, the others with the
// narrow one.
func outboundRoutes(cluster string, action func() *routev3.RouteAction) []*routev3.Route {
	idem := action()
	idem.RetryPolicy = retryPolicy(retryIdempotent, UnreachableHeader, ResetHeader)
	other := action()
	other.RetryPolicy = retryPolicy(retryOnAny, UnreachableHeader)
	return []*routev3.Route{{
		Name: "idempotent",
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			Headers: []*routev3.HeaderMatcher{{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
				StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{
					SafeRegex: &matcherv3.RegexMatcher{Regex: "GET|HEAD|OPTIONS"}}}}}}},
		Action: &routev3.Route_Route{Route: idem},
	}, {
		Name:   "other",
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: other},
	}}
}

func retryPolicy(on string, headers ...string) *routev3.RetryPolicy {
	p := &routev3.RetryPolicy{
		RetryOn:    on,
		NumRetries: wrapperspb.UInt32(numRetries),
		RetryHostPredicate: []*routev3.RetryPolicy_RetryHostPredicate{{
			Name:       "envoy.retry_host_predicates.previous_hosts",
			ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: mustAny(&previoushostsv3.PreviousHostsPredicate{})},
		}},
		HostSelectionRetryMaxAttempts: 10,
	}
	for _, h := range headers {
		p.RetriableHeaders = append(p.RetriableHeaders, &routev3.HeaderMatcher{
			Name: h, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}})
	}
	return p
}

// appFailureReplies marks the inbound sidecar's own replies when its app
// refused the connection or had no endpoint (response flags UF, UH) and
// when the app closed the connection before answering (UC): the client
// sidecar retries the first on another endpoint, the second too for
// idempotent methods.
func appFailureReplies() *hcmv3.LocalReplyConfig {
	mapper := func(header string, flags ...string) *hcmv3.ResponseMapper {
		return &hcmv3.ResponseMapper{
			Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{
				ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{Flags: flags}}},
			HeadersToAdd: []*corev3.HeaderValueOption{{
				Header:       &corev3.HeaderValue{Key: header, Value: "%RESPONSE_FLAGS%"},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}},
		}
	}
	return &hcmv3.LocalReplyConfig{Mappers: []*hcmv3.ResponseMapper{
		mapper(UnreachableHeader, "UF", "UH"),
		mapper(ResetHeader, "UC"),
	}}
}

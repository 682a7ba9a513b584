package translate

import (
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Retries cover only requests that never reached an application, so they
// are safe for every method, POST included:
//   - the client sidecar could not connect to the server sidecar, or the
//     stream was refused or reset before any of the request was sent;
//   - the server sidecar answered that its app refused the connection
//     (a pod shutting down whose endpoint is still in the client's view):
//     it marks that local reply with RetryHeader, and nothing else does.
//
// A retry goes to another endpoint where one exists.
const (
	// RetryHeader marks an inbound sidecar's own reply when the app could not
	// be reached at all; the value says why.
	RetryHeader = "x-meshd-app-unreachable"
	retryOn     = "connect-failure,refused-stream,reset-before-request,retriable-headers"
	// retries beyond the first attempt: a scale-down that removes several
	// endpoints at once still finds a live one.
	numRetries = 3
)

// outboundRetryPolicy is the retry policy of every outbound HTTP route.
func outboundRetryPolicy() *routev3.RetryPolicy {
	return &routev3.RetryPolicy{
		RetryOn:    retryOn,
		NumRetries: wrapperspb.UInt32(numRetries),
		RetriableHeaders: []*routev3.HeaderMatcher{{
			Name:                 RetryHeader,
			HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true},
		}},
		RetryHostPredicate: []*routev3.RetryPolicy_RetryHostPredicate{{
			Name:       "envoy.retry_host_predicates.previous_hosts",
			ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: mustAny(&previoushostsv3.PreviousHostsPredicate{})},
		}},
		HostSelectionRetryMaxAttempts: 5,
	}
}

// unreachableAppReply marks the inbound sidecar's local replies for an app
// that refused the connection or had no endpoint (response flags UF, UH):
// the client sidecar retries those on another endpoint.
func unreachableAppReply() *hcmv3.LocalReplyConfig {
	return &hcmv3.LocalReplyConfig{Mappers: []*hcmv3.ResponseMapper{{
		Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{
			ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{Flags: []string{"UF", "UH"}}}},
		HeadersToAdd: []*corev3.HeaderValueOption{{
			Header:       &corev3.HeaderValue{Key: RetryHeader, Value: "%RESPONSE_FLAGS%"},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}},
	}}}
}

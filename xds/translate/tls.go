package translate

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/sds"
)

// Mesh TLS: every hop meshd configures at both ends (sidecar to sidecar,
// sidecar to meshd) speaks TLS 1.3 only, so certificates, and the SPIFFE IDs
// in them, travel encrypted. TLS 1.3 fixes the cipher suites to AEADs
// (AES-128/256-GCM, ChaCha20-Poly1305); the key exchange prefers the hybrid
// post-quantum X25519MLKEM768, then X25519, then P-256.
var meshCurves = []string{"X25519MLKEM768", "X25519", "P-256"}

// TLSParams is the protocol policy of every mesh-internal TLS context
// (package bootstrap uses it for the xDS connection).
func TLSParams() *tlsv3.TlsParameters {
	return &tlsv3.TlsParameters{
		TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
		TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
		EcdhCurves:                meshCurves,
	}
}

// commonTLS presents the pod's certificate (secret "default") and checks
// the peer against the trust bundle (secret "ROOTCA") and the given SANs.
func commonTLS(sans []*tlsv3.SubjectAltNameMatcher) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsParams: TLSParams(),
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{
			Name: sds.NameDefault, SdsConfig: adsConfig(),
		}},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: sds.NameRootCA, SdsConfig: adsConfig()},
			},
		},
	}
}

// upstreamTLS is the client side: the server must hold one of the service's
// identities.
func upstreamTLS(sni string, ids []string) *corev3.TransportSocket {
	sans := make([]*tlsv3.SubjectAltNameMatcher, 0, len(ids))
	for _, id := range ids {
		sans = append(sans, uriSAN(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}}))
	}
	return tlsSocket(&tlsv3.UpstreamTlsContext{CommonTlsContext: commonTLS(sans), Sni: sni})
}

// downstreamTLS is the server side: the client must present a certificate
// with an identity of the mesh's trust domain.
func downstreamTLS(trustDomain string) *corev3.TransportSocket {
	san := uriSAN(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + trustDomain + "/"}})
	return tlsSocket(&tlsv3.DownstreamTlsContext{
		CommonTlsContext:         commonTLS([]*tlsv3.SubjectAltNameMatcher{san}),
		RequireClientCertificate: wrapperspb.Bool(true),
	})
}

func uriSAN(m *matcherv3.StringMatcher) *tlsv3.SubjectAltNameMatcher {
	return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: m}
}

func tlsSocket(ctx proto.Message) *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name:       "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)},
	}
}

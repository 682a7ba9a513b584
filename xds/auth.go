package xds

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/sds"
)

// Peer is what meshd knows about a connected proxy from its verified client
// certificate, never from what the proxy claims.
type Peer struct {
	// Identity is the SPIFFE identity of the certificate's only URI SAN.
	Identity ca.Identity
	// NodeID is the node ID the certificate is bound to: its Subject
	// CommonName, "<pod>.<namespace>".
	NodeID string
	// Serial is the client certificate's serial number (hex).
	Serial string
	// ProxyID is set for certificates issued at injection, which are bound
	// to a proxy ID recorded on the pod (annotation meshd.io/proxy-id)
	// because the pod's name is not known yet then. NodeID is empty until
	// the stream's first request names a pod that carries this proxy ID.
	ProxyID string
	// PodUID is set for certificates a kubelet obtained for the pod through
	// a PodCertificateRequest (ca.PodUIDOf): bound to one pod object, its
	// name in NodeID and its UID here. The stream is accepted once the pod
	// meshd sees under that name has that UID (podChecked).
	PodUID     string
	podChecked bool
}

// ProxyCommonName is the Subject CommonName of a client certificate bound
// to a proxy ID rather than to a node ID. Pod names cannot hold ':'.
func ProxyCommonName(proxyID string) string { return "proxy:" + proxyID }

// Pod returns the pod name the node ID names.
func (p Peer) Pod() string {
	pod, _, _ := strings.Cut(p.NodeID, ".")
	return pod
}

// NodeID formats the node ID of a pod's sidecar, "<pod>.<namespace>".
func NodeID(namespace, pod string) string { return pod + "." + namespace }

// PeerFromContext extracts the authenticated proxy of a gRPC stream. The TLS
// handshake has already verified the chain against the mesh bundle; this
// checks the shape of the certificate. Errors are Unauthenticated statuses.
func PeerFromContext(ctx context.Context) (Peer, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Peer{}, status.Error(codes.Unauthenticated, "xds: no peer information")
	}
	tlsInfo, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Peer{}, status.Error(codes.Unauthenticated, "xds: stream is not TLS")
	}
	chains := tlsInfo.State.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return Peer{}, status.Error(codes.Unauthenticated, "xds: no verified client certificate")
	}
	peerInfo, err := peerFromCert(chains[0][0])
	if err != nil {
		return Peer{}, status.Error(codes.Unauthenticated, err.Error())
	}
	return peerInfo, nil
}

func peerFromCert(cert *x509.Certificate) (Peer, error) {
	if len(cert.URIs) != 1 {
		return Peer{}, fmt.Errorf("xds: client certificate has %d URI SANs, want exactly one SPIFFE ID", len(cert.URIs))
	}
	id, err := ca.ParseSPIFFEID(cert.URIs[0].String())
	if err != nil {
		return Peer{}, fmt.Errorf("xds: client certificate: %w", err)
	}
	node := cert.Subject.CommonName
	if proxyID, ok := strings.CutPrefix(node, "proxy:"); ok {
		if !validProxyID(proxyID) {
			return Peer{}, fmt.Errorf("xds: client certificate CN %q: malformed proxy ID", node)
		}
		return Peer{Identity: id, ProxyID: proxyID, Serial: cert.SerialNumber.Text(16)}, nil
	}
	pod, ns, ok := strings.Cut(node, ".")
	if !ok || pod == "" || ns != id.Namespace {
		return Peer{}, fmt.Errorf("xds: client certificate CN %q is not <pod>.%s", node, id.Namespace)
	}
	return Peer{Identity: id, NodeID: node, Serial: cert.SerialNumber.Text(16), PodUID: ca.PodUIDOf(cert)}, nil
}

// errDenied builds the PermissionDenied status a proxy gets for asking for
// anything that is not its own.
func errDenied(format string, args ...any) error {
	return status.Errorf(codes.PermissionDenied, "xds: "+format, args...)
}

// validProxyID accepts 8 to 64 lowercase hex digits and dashes.
func validProxyID(id string) bool {
	if len(id) < 8 || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r == '-') {
			return false
		}
	}
	return true
}

// BoundPod is what a sidecar's client certificate may be bound to: the
// proxy ID the injector recorded on the pod, and the pod object's UID.
type BoundPod struct {
	ProxyID, UID string
}

// ProxyResolver tells what the pod behind a node ID carries; known is false
// while the pod is not (yet) in meshd's view.
type ProxyResolver func(nodeID string) (pod BoundPod, known bool)

// bindNode resolves the node ID of a peer whose certificate is bound to a
// proxy ID: the node must name a pod of the certificate's namespace that
// carries that proxy ID. A pod meshd does not know yet is Unavailable (the
// proxy retries); a pod with another proxy ID is PermissionDenied.
func bindNode(p *Peer, node *corev3.Node, resolve ProxyResolver) error {
	if node == nil || node.GetId() == "" {
		return status.Error(codes.InvalidArgument, "xds: the first request must carry the node ID")
	}
	id := node.GetId()
	pod, ns, ok := strings.Cut(id, ".")
	if !ok || pod == "" || ns != p.Identity.Namespace {
		return errDenied("node ID %q is not <pod>.%s", id, p.Identity.Namespace)
	}
	if resolve == nil {
		return errDenied("proxy-ID certificates are not accepted by this server")
	}
	got, known := resolve(id)
	if !known {
		return status.Errorf(codes.Unavailable, "xds: pod %s is not known yet; retry", id)
	}
	if got.ProxyID != p.ProxyID {
		return errDenied("pod %s does not carry proxy ID %s", id, p.ProxyID)
	}
	p.NodeID = id
	return nil
}

// bindPodUID checks a certificate bound to a pod object: the pod meshd
// sees under the certificate's node ID must have the certificate's UID (a
// certificate of a deleted pod does not pass for a new pod of the same
// name). A pod meshd does not know yet is Unavailable (the proxy retries).
func bindPodUID(p *Peer, resolve ProxyResolver) error {
	if resolve == nil {
		return errDenied("pod-bound certificates are not accepted by this server")
	}
	got, known := resolve(p.NodeID)
	if !known {
		return status.Errorf(codes.Unavailable, "xds: pod %s is not known yet; retry", p.NodeID)
	}
	if got.UID != p.PodUID {
		return errDenied("pod %s has UID %s; the client certificate was issued to UID %s", p.NodeID, got.UID, p.PodUID)
	}
	p.podChecked = true
	return nil
}

// authorizeNode checks the node a request names against the authenticated peer.
func authorizeNode(p Peer, node *corev3.Node) error {
	if node == nil {
		return nil // later requests on a stream may omit the node
	}
	if node.GetId() != p.NodeID {
		return errDenied("node ID %q does not match the client certificate (%s)", node.GetId(), p.NodeID)
	}
	if md := node.GetMetadata().GetFields(); md != nil {
		for key, want := range map[string]string{"NAMESPACE": p.Identity.Namespace, "SERVICE_ACCOUNT": p.Identity.ServiceAccount} {
			if v, ok := md[key]; ok && v.GetStringValue() != want {
				return errDenied("node metadata %s=%q does not match the client certificate (%s)", key, v.GetStringValue(), want)
			}
		}
	}
	return nil
}

// authorizeSecrets refuses any secret name but the proxy's own two.
func authorizeSecrets(names []string) error {
	for _, n := range names {
		if n != sds.NameDefault && n != sds.NameRootCA { // its own certificate and the trust bundle
			return errDenied("secret %q is not this proxy's (only %q and %q are served)", n, sds.NameDefault, sds.NameRootCA)
		}
	}
	return nil
}

var errNoPeer = errors.New("xds: stream has no authenticated peer")

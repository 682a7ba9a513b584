package sds

import (
	"context"
	"sync"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/ca"
)

type noRenewer struct{ t *testing.T }

func (r noRenewer) Watch(context.Context, string, ca.Request, func(*ca.Certificate)) {
	r.t.Error("a certificate was issued for a proxy whose key is on its node")
}

// A proxy whose key is on its node gets "default" as file references (no
// key, no certificate made for it) and the bundle, again when the bundle
// changes; a stream of the same node with a meshd-made certificate is
// refused.
func TestAddOnNode(t *testing.T) {
	var mu sync.Mutex
	got := map[string][]*tlsv3.Secret{}
	bundle := []byte("roots-1")
	m, err := New(Config{Renewer: noRenewer{t}, Bundle: func() []byte { return bundle },
		NodeFiles: NodeFiles{Chain: "/etc/meshd/proxy/cert-chain.pem", Key: "/etc/meshd/proxy/key.pem"},
		OnSecrets: func(node string, s []*tlsv3.Secret) { mu.Lock(); got[node] = s; mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	id := ca.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	if err := m.AddOnNode(context.Background(), "web-1.shop", id); err != nil {
		t.Fatal(err)
	}
	s := got["web-1.shop"]
	if len(s) != 2 || s[0].GetName() != NameDefault || s[1].GetName() != NameRootCA {
		t.Fatalf("secrets %v", s)
	}
	tc := s[0].GetTlsCertificate()
	if tc.GetPrivateKey().GetFilename() != "/etc/meshd/proxy/key.pem" || tc.GetCertificateChain().GetFilename() != "/etc/meshd/proxy/cert-chain.pem" ||
		len(tc.GetPrivateKey().GetInlineBytes()) > 0 || tc.GetWatchedDirectory().GetPath() != "/etc/meshd/proxy" {
		t.Errorf("default is not a reference to the node's files: %v", tc)
	}
	bundle = []byte("roots-2")
	m.BundleChanged()
	if b := got["web-1.shop"][1].GetValidationContext().GetTrustedCa().GetInlineBytes(); string(b) != "roots-2" {
		t.Errorf("bundle after the change: %q", b)
	}
	if err := m.Add(context.Background(), "web-1.shop", id, "web-1"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a meshd-keyed stream for an on-node proxy: %v, want PermissionDenied", err)
	}
	if !m.Remove("web-1.shop") {
		t.Error("the last reference did not remove the proxy")
	}
}

package xds

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/ca"
)

// TestBindNode: a proxy-ID certificate is bound only to a pod of its
// namespace that carries its proxy ID.
func TestBindNode(t *testing.T) {
	resolve := func(node string) (BoundPod, bool) {
		switch node {
		case "web-abc.demo":
			return BoundPod{ProxyID: "0123456789abcdef", UID: "uid-web"}, true
		case "other-xyz.demo":
			return BoundPod{ProxyID: "fedcba9876543210", UID: "uid-other"}, true
		}
		return BoundPod{}, false
	}
	id := ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "web"}
	cases := map[string]struct {
		node string
		want codes.Code
	}{
		"its pod":                  {"web-abc.demo", codes.OK},
		"a pod with another proxy": {"other-xyz.demo", codes.PermissionDenied},
		"another namespace":        {"web-abc.prod", codes.PermissionDenied},
		"pod not known yet":        {"new-pod.demo", codes.Unavailable},
		"no node ID":               {"", codes.InvalidArgument},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			p := Peer{Identity: id, ProxyID: "0123456789abcdef"}
			err := bindNode(&p, &corev3.Node{Id: c.node}, resolve)
			if got := status.Code(err); got != c.want {
				t.Fatalf("bind %q: %v, want %v", c.node, err, c.want)
			}
			if c.want == codes.OK && p.NodeID != c.node {
				t.Errorf("NodeID %q", p.NodeID)
			}
			if c.want != codes.OK && p.NodeID != "" {
				t.Errorf("refused but bound to %q", p.NodeID)
			}
		})
	}
	if err := bindNode(&Peer{Identity: id, ProxyID: "0123456789abcdef"}, &corev3.Node{Id: "web-abc.demo"}, nil); status.Code(err) != codes.PermissionDenied {
		t.Errorf("without a resolver: %v", err)
	}
}

// TestBindPodUID: a certificate from a PodCertificateRequest names its pod
// (node ID) and that pod object's UID; only that pod object passes.
func TestBindPodUID(t *testing.T) {
	resolve := func(node string) (BoundPod, bool) {
		if node == "web-abc.demo" {
			return BoundPod{UID: "uid-web"}, true
		}
		return BoundPod{}, false
	}
	id := ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "web"}
	for name, c := range map[string]struct {
		node, uid string
		want      codes.Code
	}{
		"its pod":                       {"web-abc.demo", "uid-web", codes.OK},
		"a new pod under a reused name": {"web-abc.demo", "uid-deleted", codes.PermissionDenied},
		"pod not known yet":             {"web-new.demo", "uid-new", codes.Unavailable},
	} {
		t.Run(name, func(t *testing.T) {
			p := Peer{Identity: id, NodeID: c.node, PodUID: c.uid}
			if got := status.Code(bindPodUID(&p, resolve)); got != c.want {
				t.Fatalf("bind %s uid %s: %v, want %v", c.node, c.uid, got, c.want)
			}
			if p.podChecked != (c.want == codes.OK) {
				t.Errorf("podChecked = %v", p.podChecked)
			}
		})
	}
	if err := bindPodUID(&Peer{Identity: id, NodeID: "web-abc.demo", PodUID: "uid-web"}, nil); status.Code(err) != codes.PermissionDenied {
		t.Errorf("without a resolver: %v", err)
	}
}

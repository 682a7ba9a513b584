package xds

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/xds/publish"
)

// SecretKeeper keeps a proxy's secrets (sds.Manager): Add returns once the
// proxy's first secrets have been published; Remove reports whether the last
// reference went.
type SecretKeeper interface {
	Add(ctx context.Context, nodeID string, id ca.Identity, pod string) error
	// AddOnNode is Add for a proxy whose certificate and key are files on
	// its node (its sidecar authenticated with a pod-bound certificate the
	// kubelet obtained): no key is made or sent for it.
	AddOnNode(ctx context.Context, nodeID string, id ca.Identity) error
	Remove(nodeID string) bool
}

// ProxyHooks connects streams to the mesh config, secrets and snapshots: a
// proxy that connects gets its own resources and its secrets (and so its
// snapshot) before its first response; the last stream of a proxy that
// leaves takes its snapshot along.
type ProxyHooks struct {
	Secrets   SecretKeeper
	Publisher *publish.Publisher
	// Mesh, if set, gives each proxy its own resources (inbound side).
	Mesh *Mesh
	// KeyOnNode: a proxy that authenticated with a pod-bound certificate
	// (Peer.PodUID, from a podCertificate volume) uses that volume's
	// certificate and key for mTLS too (SecretKeeper.AddOnNode).
	KeyOnNode bool
}

// OnConnect implements Hooks.
func (h ProxyHooks) OnConnect(ctx context.Context, p Peer) error {
	if h.Mesh != nil {
		if err := h.Mesh.AddProxy(ctx, p); err != nil {
			return err // not added
		}
	}
	add := func() error { return h.Secrets.Add(ctx, p.NodeID, p.Identity, p.Pod()) }
	if h.KeyOnNode && p.PodUID != "" {
		add = func() error { return h.Secrets.AddOnNode(ctx, p.NodeID, p.Identity) }
	}
	if err := add(); err != nil {
		if status.Code(err) == codes.PermissionDenied {
			// Nothing was added to the secrets; undo only the mesh's part.
			if h.Mesh != nil {
				h.Mesh.RemoveProxy(p.NodeID)
			}
			return status.Error(codes.PermissionDenied, err.Error())
		}
		// The stream fails and OnDisconnect will not come: undo the Add.
		h.OnDisconnect(p)
		return err
	}
	return nil
}

// OnDisconnect implements Hooks.
func (h ProxyHooks) OnDisconnect(p Peer) {
	if h.Mesh != nil {
		h.Mesh.RemoveProxy(p.NodeID)
	}
	if h.Secrets.Remove(p.NodeID) {
		h.Publisher.RemoveProxy(p.NodeID)
	}
}

// OnACK implements ACKHook: the Publisher measures convergence.
func (h ProxyHooks) OnACK(nodeID, typeURL, version string) {
	if h.Publisher != nil {
		h.Publisher.OnACK(nodeID, typeURL, version)
	}
}

package xds

import (
	"context"

	"github.com/meshd/meshd/ca"
)

// SecretKeeper keeps a proxy's secrets (sds.Manager): Add returns once the
// proxy's first secrets have been published; Remove reports whether the last
// reference went.
type SecretKeeper interface {
	Add(ctx context.Context, nodeID string, id ca.Identity, pod string) error
	Remove(nodeID string) bool
}

// ProxyHooks connects streams to secrets and snapshots: a proxy that connects
// gets its secrets (and so its snapshot) before its first response; the last
// stream of a proxy that leaves takes its snapshot along.
type ProxyHooks struct {
	Secrets   SecretKeeper
	Publisher *Publisher
}

// OnConnect implements Hooks.
func (h ProxyHooks) OnConnect(ctx context.Context, p Peer) error {
	return h.Secrets.Add(ctx, p.NodeID, p.Identity, p.Pod())
}

// OnDisconnect implements Hooks.
func (h ProxyHooks) OnDisconnect(p Peer) {
	if h.Secrets.Remove(p.NodeID) {
		h.Publisher.RemoveProxy(p.NodeID)
	}
}

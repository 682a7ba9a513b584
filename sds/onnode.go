package sds

import (
	"context"
	"errors"
	"path"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/ca"
)

// NodeFiles names where a proxy's certificate chain and private key are on
// its own node: a podCertificate projected volume, whose key the kubelet
// made and whose files it refreshes (in one atomic swap of the volume).
type NodeFiles struct {
	Chain, Key string
}

// OnNodeSecret returns secret "default" as references to the files on the
// proxy's node: Envoy reads them and reloads them when their directory
// changes (the kubelet swaps the volume's files atomically). The resource
// holds no key material.
func OnNodeSecret(f NodeFiles) *tlsv3.Secret {
	file := func(p string) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: p}}
	}
	return &tlsv3.Secret{Name: NameDefault, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: file(f.Chain), PrivateKey: file(f.Key),
		WatchedDirectory: &corev3.WatchedDirectory{Path: path.Dir(f.Chain)},
	}}}
}

// AddOnNode starts keeping the secrets of a proxy whose own certificate
// and key are files on its node (Config.NodeFiles): meshd serves
// "default" as references to them and "ROOTCA" from Config.Bundle, and
// never makes or sends a key for it. It publishes at once. As with Add, a
// second stream of the same node shares the secrets if it authenticated as
// the same identity.
func (m *Manager) AddOnNode(ctx context.Context, nodeID string, id ca.Identity) error {
	if m.cfg.Bundle == nil || m.cfg.NodeFiles.Chain == "" {
		return errors.New("sds: Bundle and NodeFiles are required for proxies whose keys stay on their nodes")
	}
	m.mu.Lock()
	p, existed := m.proxies[nodeID]
	if existed && (p.id != id || !p.onNode) {
		m.mu.Unlock()
		return status.Errorf(codes.PermissionDenied, "sds: the secrets of %s belong to %s; refused for %s", nodeID, p.id, id)
	}
	if !existed {
		p = &proxy{id: id, onNode: true, issued: make(chan struct{})}
		close(p.issued)
		m.proxies[nodeID] = p
	}
	p.refs++
	m.mu.Unlock()
	if !existed {
		m.publishOnNode(nodeID)
		m.cfg.Logger.Info("sds: secrets are references to the proxy's own files (key made on its node)", "proxy", nodeID, "identity", id.String(),
			"chain", m.cfg.NodeFiles.Chain)
	}
	return ctx.Err()
}

func (m *Manager) publishOnNode(nodeID string) {
	m.cfg.OnSecrets(nodeID, []*tlsv3.Secret{OnNodeSecret(m.cfg.NodeFiles), BundleSecret(m.cfg.Bundle())})
}

// BundleChanged pushes the current bundle to every proxy whose key is on
// its node (the others get it with their re-issued certificates). Call it
// after the CA material changed (root rotation).
func (m *Manager) BundleChanged() {
	m.mu.Lock()
	var nodes []string
	for n, p := range m.proxies {
		if p.onNode {
			nodes = append(nodes, n)
		}
	}
	m.mu.Unlock()
	for _, n := range nodes {
		m.publishOnNode(n)
	}
}

package sds

import (
	"context"
	"errors"
	"fmt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"log/slog"
	"sync"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshd/meshd/ca"
)

// Renewer keeps one certificate fresh: it issues at once, calls onCert with
// every new certificate (renewals and bundle changes included) until ctx
// ends. Implemented by ca's renewal engine.
type Renewer interface {
	Watch(ctx context.Context, key string, req ca.Request, onCert func(*ca.Certificate))
}

// Config configures a Manager.
type Config struct {
	Renewer Renewer
	// OnSecrets receives a proxy's complete secret set ("default" and
	// "ROOTCA") every time it changes. It must not keep the slice.
	OnSecrets func(nodeID string, secrets []*tlsv3.Secret)
	// FirstCertTimeout bounds how long Add waits for the first certificate
	// (default 30s).
	FirstCertTimeout time.Duration
	Logger           *slog.Logger
	// Bundle and NodeFiles serve proxies whose keys stay on their nodes
	// (AddOnNode): the current trust bundle, and where their certificate
	// files are inside the sidecar.
	Bundle    func() []byte
	NodeFiles NodeFiles
}

// Manager keeps the secrets of every connected proxy: one certificate per
// proxy (a fresh key per pod), renewed by the Renewer and pushed through
// OnSecrets. Safe for concurrent use.
type Manager struct {
	cfg     Config
	mu      sync.Mutex
	proxies map[string]*proxy
}

type proxy struct {
	id     ca.Identity // whose key this proxy's secrets carry
	onNode bool        // its key is on its node (AddOnNode)
	refs   int
	cancel context.CancelFunc
	issued chan struct{} // closed at the first certificate
	last   *ca.Certificate
}

// New returns a Manager.
func New(cfg Config) (*Manager, error) {
	if cfg.Renewer == nil || cfg.OnSecrets == nil {
		return nil, errors.New("sds: Renewer and OnSecrets are required")
	}
	if cfg.FirstCertTimeout == 0 {
		cfg.FirstCertTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Manager{cfg: cfg, proxies: map[string]*proxy{}}, nil
}

// Add starts keeping secrets for a proxy (pod: its pod's name, in the
// identity's namespace) and waits until its first
// certificate has been handed to OnSecrets (or the timeout). A second Add
// for the same node (a second stream) shares the first one's certificate
// if it authenticated as the same identity, and gets ErrOtherIdentity
// otherwise: secrets follow the authenticated identity, never the node ID
// alone; the error is a PermissionDenied status, for the stream. ctx bounds the proxy's lifetime in the manager, along with Remove.
func (m *Manager) Add(ctx context.Context, nodeID string, id ca.Identity, pod string) error {
	m.mu.Lock()
	p, existed := m.proxies[nodeID]
	if existed && (p.id != id || p.onNode) {
		m.mu.Unlock()
		return status.Errorf(codes.PermissionDenied, "sds: the secrets of %s belong to %s; refused for %s", nodeID, p.id, id)
	}
	if !existed {
		p = &proxy{id: id, issued: make(chan struct{})}
		m.proxies[nodeID] = p
	}
	p.refs++
	m.mu.Unlock()
	if !existed {
		m.watch(ctx, p, nodeID, id, pod)
	}
	select {
	case <-p.issued:
		return nil
	case <-time.After(m.cfg.FirstCertTimeout):
		return fmt.Errorf("sds: no certificate for %s within %s", nodeID, m.cfg.FirstCertTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// watch starts the renewals of a new proxy. The Renewer may call back before
// Watch returns, so no lock is held here.
func (m *Manager) watch(ctx context.Context, p *proxy, nodeID string, id ca.Identity, pod string) {
	wctx, cancel := context.WithCancel(ctx)
	m.mu.Lock()
	removed := m.proxies[nodeID] != p
	p.cancel = cancel
	m.mu.Unlock()
	if removed {
		cancel()
		return
	}
	var once sync.Once
	if pod != "" {
		pod = id.Namespace + "/" + pod // ca.Request.Pod is namespace/name
	}
	m.cfg.Renewer.Watch(wctx, nodeID, ca.Request{Identity: id, Pod: pod}, func(c *ca.Certificate) {
		m.mu.Lock()
		p.last = c
		m.mu.Unlock()
		m.cfg.OnSecrets(nodeID, []*tlsv3.Secret{CertificateSecret(c), BundleSecret(c.BundlePEM)})
		m.cfg.Logger.Info("sds: secrets updated", "proxy", nodeID, "identity", id.String(),
			"serial", c.Leaf.SerialNumber.Text(16), "not_after", c.Leaf.NotAfter)
		once.Do(func() { close(p.issued) })
	})
}

// Remove drops one reference to a proxy; the last one stops its renewals.
func (m *Manager) Remove(nodeID string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.proxies[nodeID]
	if p == nil {
		return false
	}
	if p.refs--; p.refs > 0 {
		return false
	}
	if p.cancel != nil {
		p.cancel()
	}
	delete(m.proxies, nodeID)
	return true
}

// Certificates returns the current certificate of every proxy (for the debug
// endpoint; callers must not log the keys).
func (m *Manager) Certificates() map[string]*ca.Certificate {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]*ca.Certificate, len(m.proxies))
	for n, p := range m.proxies {
		if p.last != nil {
			out[n] = p.last
		}
	}
	return out
}

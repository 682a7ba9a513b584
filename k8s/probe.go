package k8s

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
)

// APIProbe reports whether the apiserver answers /readyz (checked at most
// every 2 s). While it does not, meshd keeps serving the last config and
// issuing certificates, but reports not ready for new config.
type APIProbe struct {
	client kubernetes.Interface
	mu     sync.Mutex
	at     time.Time
	err    error
}

// NewAPIProbe returns a probe of client's apiserver.
func NewAPIProbe(client kubernetes.Interface) *APIProbe { return &APIProbe{client: client} }

// Reachable returns nil while the apiserver answers /readyz.
func (p *APIProbe) Reachable() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.at) < 2*time.Second {
		return p.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	p.err = nil
	if err := p.client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error(); err != nil {
		p.err = fmt.Errorf("kubernetes API unreachable (serving the last config): %w", err)
	}
	p.at = time.Now()
	return p.err
}

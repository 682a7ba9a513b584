package certmanager

import (
	"bytes"
	"context"
	"log/slog"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/meshd/meshd/ca"
)

// BundleConfig names the object a BundleSource follows (--trust-bundle).
type BundleConfig struct {
	Client    kubernetes.Interface
	Namespace string
	// Kind is "configmap" or "secret".
	Kind, Name, Key string
	Logger          *slog.Logger
	// OnChange is called (on the informer's goroutine, after PEM returns
	// the new bundle) when a valid bundle replaces a different one.
	OnChange func()
}

// BundleSource follows one key of a ConfigMap or Secret (trust-manager
// style) through an informer on that one object: the trust bundle served
// instead of the issuer's status.ca (Config.TrustBundle).
type BundleSource struct {
	cfg BundleConfig

	mu  sync.Mutex
	pem []byte
}

// NewBundleSource returns a source that follows cfg's object once started.
func NewBundleSource(cfg BundleConfig) *BundleSource {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.OnChange == nil {
		cfg.OnChange = func() {}
	}
	return &BundleSource{cfg: cfg}
}

// PEM returns the bundle last read (nil before the first valid one).
func (b *BundleSource) PEM() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pem
}

// Start follows the object until ctx ends.
func (b *BundleSource) Start(ctx context.Context) error {
	var rc cache.Getter = b.cfg.Client.CoreV1().RESTClient()
	var obj runtime.Object = &corev1.ConfigMap{}
	resource := "configmaps"
	if b.cfg.Kind == "secret" {
		obj, resource = &corev1.Secret{}, "secrets"
	}
	lw := cache.NewListWatchFromClient(rc, resource, b.cfg.Namespace, fields.OneTermEqualSelector("metadata.name", b.cfg.Name))
	_, ctrl := cache.NewInformerWithOptions(cache.InformerOptions{ListerWatcher: lw, ObjectType: obj,
		Handler: cache.ResourceEventHandlerFuncs{AddFunc: b.set, UpdateFunc: func(_, n any) { b.set(n) }}})
	ctrl.RunWithContext(ctx)
	return nil
}

func (b *BundleSource) set(obj any) {
	var data []byte
	switch o := obj.(type) {
	case *corev1.ConfigMap:
		data = []byte(o.Data[b.cfg.Key])
	case *corev1.Secret:
		data = o.Data[b.cfg.Key]
	}
	source := b.cfg.Kind + "/" + b.cfg.Name
	if certs, err := ca.ParseCertsPEM(data); err != nil || len(certs) == 0 {
		b.cfg.Logger.Error("ca: trust bundle has no certificate; keeping the previous one", "source", source, "key", b.cfg.Key)
		return
	}
	b.mu.Lock()
	changed := b.pem != nil && !bytes.Equal(b.pem, data)
	b.pem = data
	b.mu.Unlock()
	if changed {
		b.cfg.Logger.Info("ca: trust bundle changed; issuing every certificate again", "source", source)
		b.cfg.OnChange()
	}
}

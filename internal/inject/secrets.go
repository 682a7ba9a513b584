package inject

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/k8s"
)

// Secret mode without side effects at admission: the webhook only mutates
// the pod (a random proxy ID in meshd.io/proxy-id, a Secret volume named
// after it, the app probes in meshd.io/app-probes); the SecretWriter
// creates that Secret once the pod exists, owned by the pod (its UID), so
// the garbage collector deletes it with the pod. The kubelet retries the
// missing Secret volume until it is there.

// Pods holds the latest pods seen by meshd's informers and says when they
// change. Safe for concurrent use; the pods are the informers' copies:
// nobody mutates them.
type Pods struct {
	mu      sync.Mutex
	pods    vec.Vec[*corev1.Pod]
	changed chan struct{}
}

// NewPods returns an empty Pods.
func NewPods() *Pods { return &Pods{changed: make(chan struct{}, 1)} }

// Set replaces the pods; it never blocks. The same list again (the
// watcher hands on its last one when no pod changed) is no change.
func (p *Pods) Set(pods vec.Vec[*corev1.Pod]) {
	p.mu.Lock()
	same := pods.Len() > 0 && p.pods.Same(pods)
	p.pods = pods
	p.mu.Unlock()
	if same {
		return
	}
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

func (p *Pods) get() vec.Vec[*corev1.Pod] {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pods
}

// SecretWriterConfig configures a SecretWriter.
type SecretWriterConfig struct {
	Pods *Pods
	// Resync is how often the Secrets that exist are listed again (a
	// Secret deleted under a running pod is written again; default 1m).
	// A pass that failed is retried after Retry (default 5s).
	Resync, Retry time.Duration
	// OnWrite, if set, is told each Secret written and each failure.
	OnWrite func(result string)
}

// SecretWriter writes the credentials Secret of every pod the injector
// gave a Secret volume, once the pod exists. Run it on one replica (the
// leader); a second writer only gets AlreadyExists. Start and Pass are not
// for concurrent use: one Start at a time (each leadership term).
type SecretWriter struct {
	inj *Injector
	cfg SecretWriterConfig
	// exist are the Secrets (namespace/name) known to exist; refused the
	// pods (UID) already reported as not meshd's to write for.
	exist   map[string]bool
	refused map[types.UID]bool
}

// NewSecretWriter returns a SecretWriter of the injector's credentials.
func (i *Injector) NewSecretWriter(cfg SecretWriterConfig) (*SecretWriter, error) {
	if cfg.Pods == nil {
		return nil, errors.New("inject: the SecretWriter needs Pods")
	}
	if cfg.Resync == 0 {
		cfg.Resync = time.Minute
	}
	if cfg.Retry == 0 {
		cfg.Retry = 5 * time.Second
	}
	if cfg.OnWrite == nil {
		cfg.OnWrite = func(string) {}
	}
	return &SecretWriter{inj: i, cfg: cfg}, nil
}

// Start writes missing Secrets whenever the pods change, until ctx ends.
func (w *SecretWriter) Start(ctx context.Context) error {
	resync := w.inj.cfg.Clock.NewTicker(w.cfg.Resync)
	defer resync.Stop()
	w.exist, w.refused = nil, map[types.UID]bool{}
	for {
		var retry clock.Timer
		if err := w.Pass(ctx); err != nil && ctx.Err() == nil {
			w.inj.cfg.Logger.Warn("inject: write sidecar Secrets", "error", err)
			retry = w.inj.cfg.Clock.NewTimer(w.cfg.Retry)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-w.cfg.Pods.changed:
		case <-timerC(retry):
		case <-resync.C():
			w.exist = nil
		}
		if retry != nil {
			retry.Stop()
		}
	}
}

// timerC is t's channel; nil (never ready) without a timer.
func timerC(t clock.Timer) <-chan time.Time {
	if t == nil {
		return nil
	}
	return t.C()
}

// Pass writes the Secrets the current pods lack. The first pass (and one
// after a resync) lists the Secrets that exist, so that a new leader
// issues no certificate for a Secret already there.
func (w *SecretWriter) Pass(ctx context.Context) error {
	if w.exist == nil {
		list, err := w.inj.cfg.Client.CoreV1().Secrets("").List(ctx, metav1.ListOptions{LabelSelector: LabelProxyID})
		if err != nil {
			return fmt.Errorf("inject: list sidecar Secrets: %w", err)
		}
		exist := map[string]bool{}
		for _, s := range list.Items {
			exist[s.Namespace+"/"+s.Name] = true
		}
		w.exist = exist
	}
	var errs []error
	wanted, refused := map[string]bool{}, map[types.UID]bool{}
	for pod := range w.cfg.Pods.get().Values() {
		proxyID, why := w.inj.needsSecret(pod)
		if why != "" {
			if proxyID == "" {
				continue
			}
			refused[pod.UID] = true
			if !w.refused[pod.UID] {
				w.inj.cfg.Logger.Warn("inject: no credentials Secret for a pod that carries a proxy ID", "pod", pod.Namespace+"/"+pod.Name, "reason", why)
				w.cfg.OnWrite("refused")
			}
			continue
		}
		key := pod.Namespace + "/" + SecretPrefix + proxyID
		wanted[key] = true
		if w.exist[key] {
			continue
		}
		if err := w.write(ctx, pod, proxyID); err != nil {
			errs = append(errs, err)
			w.cfg.OnWrite("failed")
			continue
		}
		w.exist[key] = true
	}
	for key := range w.exist {
		if !wanted[key] {
			delete(w.exist, key)
		}
	}
	w.refused = refused
	return errors.Join(errs...)
}

// write issues the pod's xDS client certificate and creates its Secret,
// owned by the pod.
func (w *SecretWriter) write(ctx context.Context, pod *corev1.Pod, proxyID string) error {
	i := w.inj
	sa := podServiceAccount(pod)
	probes, err := podProbes(pod)
	if err != nil {
		i.cfg.Logger.Warn("inject: the pod's app probes are unreadable; its sidecar forwards none", "pod", pod.Namespace+"/"+pod.Name, "error", err)
	}
	data, cert, err := i.credentials(ctx, pod.Namespace, sa, pod.Name, proxyID, probes)
	if err != nil {
		return fmt.Errorf("inject: sidecar credentials for %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	secret, err := secretFor(pod.Namespace, sa, pod.Name, proxyID, probes, data)
	if err != nil {
		return err
	}
	no := false
	secret.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID, BlockOwnerDeletion: &no}}
	_, err = i.cfg.Client.CoreV1().Secrets(pod.Namespace).Create(ctx, secret, metav1.CreateOptions{})
	switch {
	case apierrors.IsAlreadyExists(err):
		return nil // another replica, or a Secret of before the writer
	case err != nil:
		return fmt.Errorf("inject: create the Secret of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	w.cfg.OnWrite("written")
	i.cfg.Logger.Info("inject: sidecar credentials written", "pod", pod.Namespace+"/"+pod.Name, "secret", secret.Name, "identity", cert.Leaf.URIs[0].String(),
		"client_cert_serial", cert.Leaf.SerialNumber.Text(16), "probes", len(probes))
	return nil
}

// needsSecret says which proxy ID's credentials Secret a pod needs, or why
// meshd writes none for it (why "" when it needs one). Only a pod that
// looks exactly as the injector left it in Secret mode gets one: status
// injected, a well-formed proxy ID, the credentials volume naming that
// proxy's Secret and mounted by the sidecar alone; not in meshd's own
// namespace or kube-system (never injected), not opted out or on the host
// network, not finished or being deleted. A pod cannot have come through
// the webhook otherwise (it refuses pods with the sidecar's names), but a
// pod created where the webhook does not apply may copy the injector's
// fields: what it gets is a certificate of its own service account in its
// own namespace, whose Secrets any pod creator there may mount anyway.
func (i *Injector) needsSecret(pod *corev1.Pod) (proxyID, why string) {
	proxyID = pod.Annotations[k8s.AnnotationProxyID]
	if proxyID == "" {
		return "", "no proxy ID"
	}
	switch {
	case pod.UID == "" || pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return "", "finished, being deleted or not stored"
	case pod.Namespace == i.cfg.MeshdNamespace || pod.Namespace == "kube-system":
		return proxyID, "meshd injects no pod in namespace " + pod.Namespace
	case pod.Annotations[k8s.AnnotationStatus] != k8s.StatusInjected:
		return proxyID, fmt.Sprintf("annotation %s is not %q", k8s.AnnotationStatus, k8s.StatusInjected)
	case !validProxyID(proxyID):
		return proxyID, fmt.Sprintf("annotation %s is not 32 hex digits", k8s.AnnotationProxyID)
	}
	if why := k8s.NotMeshable(pod); why != "" {
		return proxyID, why
	}
	if why := credentialsVolume(pod, SecretPrefix+proxyID); why != "" {
		return proxyID, why
	}
	return proxyID, ""
}

// credentialsVolume says how the pod's credentials volume differs from
// the one the injector adds in Secret mode ("" if it does not).
func credentialsVolume(pod *corev1.Pod, secret string) string {
	vol := -1
	for k, v := range pod.Spec.Volumes {
		if v.Name == VolumeCreds {
			vol = k
		}
	}
	if vol < 0 {
		return fmt.Sprintf("no volume %s", VolumeCreds)
	}
	if s := pod.Spec.Volumes[vol].Secret; s == nil || s.SecretName != secret {
		return fmt.Sprintf("volume %s is not the Secret %s", VolumeCreds, secret)
	}
	proxy := FindProxy(pod)
	if proxy == nil {
		return "no sidecar container " + k8s.ContainerProxy
	}
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			for _, m := range c.VolumeMounts {
				if m.Name == VolumeCreds && c.Name != k8s.ContainerProxy {
					return fmt.Sprintf("container %q mounts the sidecar's credentials", c.Name)
				}
			}
		}
	}
	return ""
}

func validProxyID(id string) bool {
	b, err := hex.DecodeString(id)
	return err == nil && len(b) == 16 && id == strings.ToLower(id)
}

func podServiceAccount(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName == "" {
		return "default"
	}
	return pod.Spec.ServiceAccountName
}

// podProbes reads the app probes the injector recorded on the pod; only
// well-formed routes under the sidecar's probe prefix are kept.
func podProbes(pod *corev1.Pod) (map[string]bootstrap.AppProbe, error) {
	probes, err := parseProbes(pod.Annotations)
	if err != nil {
		return nil, err
	}
	for path, p := range probes {
		httpPath := p.Kind != bootstrap.ProbeGRPC && p.Kind != bootstrap.ProbeTCP
		if !strings.HasPrefix(path, bootstrap.AppProbePrefix) || p.Validate() != nil || httpPath && !strings.HasPrefix(p.Path, "/") {
			return nil, fmt.Errorf("annotation %s: %q -> %+v is not a probe route meshd writes", annotationProbes, path, p)
		}
	}
	return probes, nil
}

package testenv

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// StartControllerManager starts kube-controller-manager (EndpointSlice,
// ServiceAccount, namespace and garbage-collector controllers) against the
// environment, once per test binary.
func (e *Env) StartControllerManager(t testing.TB) {
	t.Helper()
	bin := Need(t, "kube-controller-manager")
	e.mu.Lock()
	running := e.kcm != nil && !e.kcm.exited()
	e.mu.Unlock()
	if running {
		return
	}
	p, err := startProcess("kube-controller-manager", e.Dir, nil, bin,
		"--kubeconfig", e.Kubeconfig, "--authentication-kubeconfig", e.Kubeconfig, "--authorization-kubeconfig", e.Kubeconfig,
		"--controllers", "endpointslice-controller,serviceaccount-controller,namespace-controller,garbage-collector-controller",
		"--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", "0",
		"--service-cluster-ip-range", ServiceCIDR, "--concurrent-service-endpoint-syncs", "5", "--v", "1")
	if err != nil {
		t.Fatal(err)
	}
	e.track(p)
	e.mu.Lock()
	e.kcm = p
	e.mu.Unlock()
	// Ready when the ServiceAccount controller has created "default" in a namespace.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ns := "testenv-kcm-probe"
	if err := e.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if err := e.ensureNode(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.waitFor(ctx, "ServiceAccount default in "+ns, func(ctx context.Context) error {
		_, err := e.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// CertManagerNamespace is where cert-manager keeps ClusterIssuer secrets.
const CertManagerNamespace = "cert-manager"

// StartCertManager applies cert-manager's CRDs (server-side) and starts the
// cert-manager controller out of cluster, once per test binary.
func (e *Env) StartCertManager(t testing.TB) {
	t.Helper()
	bin := Need(t, "cert-manager-controller")
	e.mu.Lock()
	running := e.cm != nil && !e.cm.exited()
	e.mu.Unlock()
	if running {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := e.applyCertManagerCRDs(ctx, bin); err != nil {
		Unavailable(t, err)
	}
	if err := e.EnsureNamespace(ctx, CertManagerNamespace); err != nil {
		t.Fatal(err)
	}
	p, err := startProcess("cert-manager", e.Dir, nil, bin,
		"--kubeconfig", e.Kubeconfig, "--cluster-resource-namespace", CertManagerNamespace)
	if err != nil {
		t.Fatal(err)
	}
	e.track(p)
	e.mu.Lock()
	e.cm = p
	e.mu.Unlock()
	// A bad flag or kubeconfig makes it exit at once; catch that here.
	select {
	case <-p.done:
		t.Fatalf("testenv: cert-manager exited at start (%v); log tail:\n%s", p.waitErr, p.logTail(4000))
	case <-time.After(2 * time.Second):
	}
}

// StopCertManager stops the cert-manager controller (to test meshd while
// cert-manager is down). StartCertManager starts it again.
func (e *Env) StopCertManager() {
	e.mu.Lock()
	p := e.cm
	e.mu.Unlock()
	if p != nil {
		p.stop(10 * time.Second)
	}
}

// applyCertManagerCRDs applies the CRD files found in <tool>/../crds/.
func (e *Env) applyCertManagerCRDs(ctx context.Context, bin string) error {
	real, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(filepath.Dir(filepath.Dir(real)), "crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("testenv: cert-manager CRDs not found next to %s (run `make tools`)", real)
	}
	return e.ApplyFiles(ctx, files...)
}

// NodeName is the one Node of the test cluster. Pods that should get
// EndpointSlice endpoints from kube-controller-manager set spec.nodeName to it.
const NodeName = "testenv-node"

func (e *Env) ensureNode(ctx context.Context) error {
	_, err := e.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: NodeName}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("testenv: node %s: %w", NodeName, err)
	}
	return nil
}

// EnsureNamespace creates a namespace unless it exists.
func (e *Env) EnsureNamespace(ctx context.Context, name string) error {
	_, err := e.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("testenv: namespace %s: %w", name, err)
	}
	return nil
}

package e2e

import (
	"context"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/inject"
	"github.com/meshd/meshd/internal/kubelet"
	"github.com/meshd/meshd/internal/netlab"
	"github.com/meshd/meshd/k8s"
)

// Kube is a real cluster to run the experiment through: kube-apiserver
// (with kube-controller-manager writing EndpointSlices) that meshd watches
// and whose admission calls meshd's injection webhook.
type Kube struct {
	Kubeconfig string
	Client     kubernetes.Interface
	// NodeName is the Node pods are scheduled to (the harness is its kubelet).
	NodeName string
	// Args are added to meshd's (e.g. --issuer-ref for cert-manager).
	Args []string
}

// credsMount is where injected sidecars find their credentials Secret; the
// harness bind-mounts each pod's copy there in the sidecar's own mount
// namespace, as the kubelet mounts the Secret volume.
const credsMount = netlab.StateDir + "/creds"

// startKubeMesh runs meshd against the cluster with injection on, creates
// the Service and the two pods through the webhook, and plays kubelet for
// them: interception from the injected init container's arguments, the
// sidecar from the injected container's arguments with the Secret mounted,
// pod status (IP, Ready) so the controller-manager writes the EndpointSlice.
func (s *seed) startKubeMesh(ctx context.Context) error {
	k := s.opts.Kube
	// Lab indexes are reused; an earlier run's namespace may still be
	// terminating, so the time makes the name unique.
	s.namespace = fmt.Sprintf("seed%d-%d", s.lab.Index, time.Now().UnixNano()%1e6)
	if err := os.MkdirAll(credsMount, 0o755); err != nil {
		return err
	}
	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "meshd-system"}},
		{ObjectMeta: metav1.ObjectMeta{Name: s.namespace, Labels: map[string]string{k8s.LabelInject: "enabled"}}},
	} {
		if _, err := k.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
			return fmt.Errorf("e2e: namespace %s: %w", ns.Name, err)
		}
	}
	svc, err := k.Client.CoreV1().Services(s.namespace).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("e2e: service: %w", err)
	}
	s.serviceIP = svc.Spec.ClusterIP
	if err := s.startKubeMeshd(ctx); err != nil {
		return err
	}
	for _, p := range []struct {
		pod    *netlab.Pod
		sa     string
		labels map[string]string
	}{{s.server, "web", map[string]string{"app": "web"}}, {s.client, "client", nil}} {
		if err := s.kubePod(ctx, p.pod, p.sa, p.labels); err != nil {
			return err
		}
	}
	s.progress("kube: service %s/web at %s; pods injected through meshd's webhook", s.namespace, s.serviceIP)
	return waitFor(ctx, 90*time.Second, "both sidecars ACKing their config", s.allAcked)
}

// startKubeMeshd starts meshd on the cluster and registers its webhook.
func (s *seed) startKubeMeshd(ctx context.Context) error {
	k := s.opts.Kube
	debugPort, err := freePort()
	if err != nil {
		return err
	}
	hookPort, err := freePort()
	if err != nil {
		return err
	}
	s.xdsAddr = fmt.Sprintf("%s:%d", s.lab.Gateway, xdsPort)
	s.debugURL = fmt.Sprintf("http://127.0.0.1:%d", debugPort)
	s.webhook = fmt.Sprintf("meshd-injector-%d", s.lab.Index)
	url := fmt.Sprintf("https://127.0.0.1:%d/inject", hookPort)
	fail, none := admissionregv1.Fail, admissionregv1.SideEffectClassNone
	mwc := &admissionregv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: s.webhook},
		Webhooks: []admissionregv1.MutatingWebhook{{Name: "sidecar-injector.meshd.io", AdmissionReviewVersions: []string{"v1"},
			SideEffects: &none, FailurePolicy: &fail, ClientConfig: admissionregv1.WebhookClientConfig{URL: &url},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": s.namespace}},
			Rules: []admissionregv1.RuleWithOperations{{Operations: []admissionregv1.OperationType{admissionregv1.Create},
				Rule: admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}}}}}
	if _, err := k.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("e2e: webhook configuration: %w", err)
	}
	args := []string{"serve", "--kubeconfig", k.Kubeconfig, "--xds-addr", s.xdsAddr, "--debug-addr", fmt.Sprintf("127.0.0.1:%d", debugPort),
		"--webhook-addr", fmt.Sprintf("127.0.0.1:%d", hookPort), "--webhook-name", s.webhook, "--sidecar-xds-addr", s.xdsAddr,
		"--sidecar-creds-dir", credsMount, "--sidecar-api", s.opts.API, "--hold-off", "20ms"}
	if s.opts.CertTTL > 0 {
		args = append(args, "--cert-ttl", s.opts.CertTTL.String())
	}
	if s.opts.RootGrace > 0 {
		args = append(args, "--root-rotation-grace", s.opts.RootGrace.String())
	}
	args = append(args, k.Args...)
	r := &replica{debugURL: s.debugURL, xdsAddr: s.xdsAddr, args: args, name: "meshd"}
	if err := s.runReplica(ctx, r); err != nil {
		return err
	}
	s.replicas, s.meshd = []*replica{r}, r.proc
	// Pods are admitted only once meshd has put its CA into the webhook.
	return waitFor(ctx, 60*time.Second, "the webhook's caBundle", func() error {
		got, err := k.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, s.webhook, metav1.GetOptions{})
		if err != nil || len(got.Webhooks[0].ClientConfig.CABundle) == 0 {
			return fmt.Errorf("not set yet (%v)", err)
		}
		return nil
	})
}

// kubePod creates a pod through the webhook and plays kubelet for it.
func (s *seed) kubePod(ctx context.Context, pod *netlab.Pod, sa string, labels map[string]string) error {
	k := s.opts.Kube
	obj, err := k.Client.CoreV1().Pods(s.namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Labels: labels},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: k.NodeName,
			Containers: []corev1.Container{{Name: "app", Image: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("e2e: create pod %s: %w", pod.Name, err)
	}
	proxy := inject.FindProxy(obj)
	var initC *corev1.Container
	for i := range obj.Spec.InitContainers {
		if obj.Spec.InitContainers[i].Name == k8s.ContainerInit {
			initC = &obj.Spec.InitContainers[i]
		}
	}
	if proxy == nil || initC == nil {
		return fmt.Errorf("e2e: pod %s was not injected (containers %d, init %d)", pod.Name, len(obj.Spec.Containers), len(obj.Spec.InitContainers))
	}
	dir := filepath.Join(s.lab.Dir, "secret-"+pod.Name)
	sc := sidecar{pod: pod, sa: sa, dir: dir, secret: inject.SecretPrefix + obj.Annotations[k8s.AnnotationProxyID]}
	// meshd writes the Secret once the pod exists; the kubelet retries the
	// volume until it is there.
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		err := s.syncSecret(ctx, &sc)
		return err == nil, nil
	}); err != nil {
		return fmt.Errorf("e2e: pod %s: its Secret %s never came: %w", pod.Name, sc.secret, s.syncSecret(ctx, &sc))
	}
	// The init container: meshd iptables with the injected arguments.
	if _, err := pod.Run(ctx, s.opts.Meshd, initC.Args...); err != nil {
		return err
	}
	args := expand(proxy.Args, map[string]string{"POD_NAME": pod.Name, "POD_NAMESPACE": s.namespace, bootstrap.PodIPEnv: pod.IP.String()})
	args = append(args, "--base-id", strconv.Itoa(s.lab.Index*100+len(s.envoys)))
	script := fmt.Sprintf("mount --bind %s %s && exec setpriv --reuid %d --regid %d --clear-groups --pdeathsig SIGKILL -- %s %s",
		dir, credsMount, ProxyUID, ProxyUID, s.opts.Envoy, strings.Join(args, " "))
	envoy, err := s.lab.Start("envoy-"+pod.Name, netlab.ProcOptions{Pod: pod}, "sh", "-c", script)
	if err != nil {
		return err
	}
	if s.envoys == nil {
		s.envoys = map[string]*netlab.Proc{}
	}
	s.envoys[pod.Name] = envoy
	s.sidecars = append(s.sidecars, sc)
	obj.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: pod.IP.String(), PodIPs: []corev1.PodIP{{IP: pod.IP.String()}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}, {Type: corev1.ContainersReady, Status: corev1.ConditionTrue}}}
	if _, err := k.Client.CoreV1().Pods(s.namespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("e2e: pod %s status: %w", pod.Name, err)
	}
	s.progress("kubelet: %s/%s injected (proxy %s), iptables %v, Envoy as uid %d with the Secret mounted at %s",
		s.namespace, pod.Name, obj.Annotations[k8s.AnnotationProxyID], initC.Args[1:], ProxyUID, credsMount)
	return nil
}

// syncSecret writes the pod's credentials Secret into its directory when it
// changed, file by file with atomic renames (as a Secret volume update).
func (s *seed) syncSecret(ctx context.Context, sc *sidecar) error {
	sec, err := s.opts.Kube.Client.CoreV1().Secrets(s.namespace).Get(ctx, sc.secret, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("e2e: Secret %s: %w", sc.secret, err)
	}
	if sec.ResourceVersion == sc.version {
		return nil
	}
	if err := os.MkdirAll(sc.dir, 0o755); err != nil {
		return err
	}
	if err := os.Chown(sc.dir, ProxyUID, ProxyUID); err != nil {
		return err
	}
	for name, data := range sec.Data {
		tmp := filepath.Join(sc.dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			return err
		}
		if err := os.Chown(tmp, ProxyUID, ProxyUID); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(sc.dir, name)); err != nil {
			return err
		}
	}
	if sc.pod == s.server {
		if certs, err := ca.ParseCertsPEM(sec.Data["cert-chain.pem"]); err == nil {
			s.mu.Lock()
			s.bootstrapSerials = append(s.bootstrapSerials, new(big.Int).Set(certs[0].SerialNumber))
			s.mu.Unlock()
		}
	}
	sc.version = sec.ResourceVersion
	return nil
}

// kubeKubelet keeps the mounted Secrets current until stop.
func (s *seed) kubeKubelet(ctx context.Context, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		for i := range s.sidecars {
			before := s.sidecars[i].version
			if err := s.syncSecret(ctx, &s.sidecars[i]); err != nil {
				s.progress("kubelet: %v", err)
			} else if s.sidecars[i].version != before {
				s.res.CredentialRefreshes++
				s.progress("kubelet: %s's Secret changed; files updated", s.sidecars[i].pod.Name)
			}
		}
	}
}

// cleanupKube removes what the run made in the cluster.
func (s *seed) cleanupKube() {
	if s.opts.Kube == nil || s.namespace == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := s.opts.Kube.Client
	_ = c.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, s.webhook, metav1.DeleteOptions{})
	_ = c.CoreV1().Namespaces().Delete(ctx, s.namespace, metav1.DeleteOptions{})
}

// expand replaces $(VAR) references as the kubelet does and quotes each
// argument for sh.
func expand(args []string, env map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = "'" + strings.ReplaceAll(kubelet.Expand(a, env), "'", `'\''`) + "'"
	}
	return out
}

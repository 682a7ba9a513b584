// Package remote reaches the debug API of an installed meshd without a
// manual port-forward: it finds meshd's pods with the user's kubeconfig and
// opens a port-forward to each one's debug port through the apiserver
// (pods/portforward, the way istioctl reaches istiod). It sits beside the
// operator commands of cmd/meshd, which read the debug API (internal/debug)
// at the local addresses it returns.
//
// Why a port-forward and not the apiserver's service proxy: the debug API
// listens on the pod's loopback in deploy/base (127.0.0.1:15014), which only
// a port-forward reaches, and the apiserver removes the caller's
// Authorization header once it has authenticated it, so a debug API that
// checks Kubernetes tokens (--debug-auth kubernetes) could not see the
// user's credentials through the proxy. Over a port-forward the user's RBAC
// decides twice: the apiserver checks create on pods/portforward in meshd's
// namespace, and, with --debug-auth kubernetes, meshd checks the user's
// bearer token and nonResourceURLs rules.
package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/streaming/pkg/httpstream"
)

// Defaults of deploy/base and the Helm chart.
const (
	DefaultNamespace = "meshd-system"
	DefaultSelector  = "app=meshd"
	DefaultDebugPort = 15014
)

// Kubeconfig names a kubeconfig the way kubectl does: an explicit path, else
// $KUBECONFIG, else ~/.kube/config. Not the in-cluster config: inside
// meshd's own pod (kubectl exec) the operator commands keep reading the
// local 127.0.0.1:15014.
type Kubeconfig struct {
	Path    string // --kubeconfig
	Context string // --context
}

// Load returns the REST config, or an error that ErrNoKubeconfig matches
// when none of the places holds one.
func (k Kubeconfig) Load() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.Path
	raw, err := rules.Load()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	if clientcmdapi.IsConfigEmpty(raw) {
		return nil, ErrNoKubeconfig
	}
	rc, err := clientcmd.NewNonInteractiveClientConfig(*raw, k.Context, &clientcmd.ConfigOverrides{}, rules).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return rc, nil
}

// ErrNoKubeconfig: no kubeconfig was given or found.
var ErrNoKubeconfig = errors.New("no kubeconfig")

// Config says which meshd to reach.
type Config struct {
	// REST is the user's kubeconfig: its credentials list the pods and open
	// the port-forwards.
	REST *rest.Config
	// Namespace and Selector find meshd's pods (default meshd-system and
	// app=meshd).
	Namespace, Selector string
	// Port is the debug port inside the pod; 0 reads it from the pod's
	// --debug-addr, else DefaultDebugPort.
	Port int
	// Errors receives the port-forwards' own error lines (nil: discarded).
	Errors io.Writer
}

// Replica is one meshd pod reachable at a local address.
type Replica struct {
	Pod  string // namespace/name
	Addr string // 127.0.0.1:<port> on this machine, forwarded to the pod
	// Token is the bearer token to send: the kubeconfig's, when the pod
	// runs --debug-auth kubernetes and the kubeconfig holds one; else empty.
	Token string
}

// Forwards are the open port-forwards; Close ends them.
type Forwards struct {
	Replicas []Replica
	stops    []chan struct{}
}

// Close stops every port-forward.
func (f *Forwards) Close() {
	for _, s := range f.stops {
		close(s)
	}
	f.stops = nil
}

// Open lists meshd's running pods and opens a port-forward to the debug port
// of each. It fails if there is no such pod or one cannot be reached (the
// error names the pod and says what the apiserver answered).
func Open(ctx context.Context, cfg Config) (*Forwards, error) {
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if cfg.Selector == "" {
		cfg.Selector = DefaultSelector
	}
	if cfg.Errors == nil {
		cfg.Errors = io.Discard
	}
	client, err := kubernetes.NewForConfig(cfg.REST)
	if err != nil {
		return nil, err
	}
	pods, err := client.CoreV1().Pods(cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: cfg.Selector})
	if err != nil {
		return nil, fmt.Errorf("list meshd pods in %s (%s): %w", cfg.Namespace, cfg.Selector, err)
	}
	f := &Forwards{}
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			continue
		}
		port, kubeAuth := DebugPort(&p)
		if cfg.Port != 0 {
			port = cfg.Port
		}
		addr, stop, err := forward(ctx, cfg, client, p.Name, port)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("port-forward to pod %s/%s port %d: %w", p.Namespace, p.Name, port, err)
		}
		r := Replica{Pod: p.Namespace + "/" + p.Name, Addr: addr}
		if kubeAuth {
			r.Token = bearerToken(cfg.REST)
		}
		f.Replicas, f.stops = append(f.Replicas, r), append(f.stops, stop)
	}
	if len(f.Replicas) == 0 {
		return nil, fmt.Errorf("no running meshd pod in namespace %s with labels %s (set -n/--selector, or --debug-addr)", cfg.Namespace, cfg.Selector)
	}
	return f, nil
}

// DebugPort reads the debug port and auth mode from a meshd pod's
// arguments (`serve --debug-addr=H:P --debug-auth=kubernetes`, either
// `--flag=value` or `--flag value`): DefaultDebugPort when not set.
func DebugPort(p *corev1.Pod) (port int, kubernetesAuth bool) {
	port = DefaultDebugPort
	for _, c := range p.Spec.Containers {
		args := append(append([]string{}, c.Command...), c.Args...)
		for i, a := range args {
			name, val, ok := strings.Cut(a, "=")
			if !ok && i+1 < len(args) {
				val = args[i+1]
			}
			switch name {
			case "--debug-addr", "-debug-addr":
				if _, ps, err := net.SplitHostPort(val); err == nil {
					if n, err := strconv.Atoi(ps); err == nil && n > 0 {
						port = n
					}
				}
			case "--debug-auth", "-debug-auth":
				kubernetesAuth = val == "kubernetes"
			}
		}
	}
	return port, kubernetesAuth
}

// forward opens one port-forward on 127.0.0.1:<any> and waits until it
// listens. Websockets first, SPDY when the apiserver cannot upgrade (as
// kubectl port-forward does).
func forward(ctx context.Context, cfg Config, client kubernetes.Interface, pod string, port int) (string, chan struct{}, error) {
	req := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(cfg.Namespace).Name(pod).SubResource("portforward")
	transport, upgrader, err := spdy.RoundTripperFor(cfg.REST)
	if err != nil {
		return "", nil, err
	}
	dialer := spdy.NewDialerForStreaming(upgrader, &http.Client{Transport: transport}, http.MethodPost, req.URL())
	if ws, err := portforward.NewSPDYOverWebsocketDialerForStreaming(req.URL(), cfg.REST); err == nil {
		dialer = portforward.NewFallbackDialerForStreaming(ws, dialer, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
	}
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddressesForStreaming(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, cfg.Errors)
	if err != nil {
		return "", nil, err
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-done:
		if err == nil {
			err = errors.New("port-forward ended")
		}
		return "", nil, err
	case <-ctx.Done():
		close(stop)
		return "", nil, ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		close(stop)
		return "", nil, fmt.Errorf("port-forward has no local port: %w", err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0].Local), stop, nil
}

// bearerToken is the kubeconfig's bearer token (inline or from its file);
// empty for client certificates and exec plugins.
func bearerToken(rc *rest.Config) string {
	if rc.BearerToken != "" {
		return rc.BearerToken
	}
	if rc.BearerTokenFile != "" {
		if b, err := os.ReadFile(rc.BearerTokenFile); err == nil {
			return strings.TrimSpace(string(b))
		}
	}
	return ""
}

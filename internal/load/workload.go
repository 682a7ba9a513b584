package load

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// Workload writes Services and their EndpointSlices to the apiserver and
// churns endpoints one write at a time. Addresses come from 198.18.0.0/16.
type Workload struct {
	Client              kubernetes.Interface
	Namespace           string
	Services, Endpoints int
	// Sidecars and Scope: with Scope > 0, Create also writes a pod per
	// sidecar (load-<i>, service account load) whose meshd.io/egress
	// annotation lists Scope services (ScopeOf).
	Sidecars, Scope int
	// Meshed: the sidecars' pods (load-<i>) are in the mesh and back the
	// services' endpoints (endpoint j is pod j mod Sidecars), as in a mesh
	// where every pod has a sidecar: each endpoint then has an identity,
	// each cluster mutual TLS and each sidecar an inbound listener.
	// Without it the endpoints are outside the mesh (plaintext).
	Meshed bool
	next   int // addresses handed out
	churn  int
	pods   int // endpoints handed a pod
}

// ScopeOf is the services sidecar i reaches (nil: every service): the
// sidecars are spread over Services/Scope groups of Scope services each.
func (w *Workload) ScopeOf(i int) []string {
	if w.Scope <= 0 || w.Scope >= w.Services {
		return nil
	}
	g := i % (w.Services / w.Scope)
	out := make([]string, 0, w.Scope)
	for j := range w.Scope {
		out = append(out, fmt.Sprintf("svc-%d", g*w.Scope+j))
	}
	return out
}

// createPods writes the sidecars' pods with their scopes (if any), in the
// mesh if Meshed.
func (w *Workload) createPods(ctx context.Context) error {
	for i := range w.Sidecars {
		scope := w.ScopeOf(i)
		if scope == nil && !w.Meshed {
			return nil
		}
		annotations := map[string]string{}
		if scope != nil {
			var entries []string
			for _, svc := range scope {
				entries = append(entries, "./"+svc)
			}
			annotations["meshd.io/egress"] = strings.Join(entries, ",")
		}
		if w.Meshed {
			annotations["meshd.io/status"] = "injected" // as the injector marks it
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("load-%d", i), Annotations: annotations},
			Spec: corev1.PodSpec{ServiceAccountName: "load", Containers: []corev1.Container{{Name: "app", Image: "load"}}}}
		if _, err := w.Client.CoreV1().Pods(w.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("load: pod %s: %w", pod.Name, err)
		}
	}
	return nil
}

func (w *Workload) addr() string {
	w.next++
	a := netip.AddrFrom4([4]byte{198, 18, byte(w.next >> 8), byte(w.next)})
	return a.String()
}

// Create writes the namespace, the Services and one EndpointSlice each.
func (w *Workload) Create(ctx context.Context) error {
	if w.Services*w.Endpoints+1000 > 65000 {
		return fmt.Errorf("load: %d x %d endpoints do not fit 198.18.0.0/16", w.Services, w.Endpoints)
	}
	c := w.Client
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: w.Namespace}}, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
		return err
	}
	for i := range w.Services {
		name := fmt.Sprintf("svc-%d", i)
		if _, err := c.CoreV1().Services(w.Namespace).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("load: service %s: %w", name, err)
		}
		slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}}}
		for range w.Endpoints {
			slice.Endpoints = append(slice.Endpoints, w.endpoint(w.addr()))
		}
		if _, err := c.DiscoveryV1().EndpointSlices(w.Namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("load: endpoint slice %s: %w", name, err)
		}
	}
	return w.createPods(ctx)
}

// AddEndpoint adds one endpoint to the next service's slice (one write) and
// returns the cluster and address that show the change.
func (w *Workload) AddEndpoint(ctx context.Context) (cluster, addr string, err error) {
	name := fmt.Sprintf("svc-%d", w.churn%w.Services)
	w.churn++
	api := w.Client.DiscoveryV1().EndpointSlices(w.Namespace)
	s, err := api.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", "", err
	}
	addr = w.addr()
	s.Endpoints = append(s.Endpoints, w.endpoint(addr))
	if _, err := api.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return "", "", err
	}
	return fmt.Sprintf("outbound|80|%s.%s", name, w.Namespace), addr, nil
}

// endpoint is a ready endpoint at addr, backed by the next sidecar's pod if
// Meshed.
func (w *Workload) endpoint(addr string) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}}
	if w.Meshed && w.Sidecars > 0 {
		e.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: w.Namespace, Name: fmt.Sprintf("load-%d", w.pods%w.Sidecars)}
		w.pods++
	}
	return e
}

func ptr[T any](v T) *T { return &v }

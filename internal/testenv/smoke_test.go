package testenv_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshd/meshd/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestEnvoyStartsAndAnswersReady(t *testing.T) {
	e := testenv.StartEnvoy(t, testenv.EnvoyOptions{Bootstrap: `
node: {id: smoke, cluster: smoke}
static_resources:
  listeners:
  - name: direct
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.direct_response
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config
          response: {inline_string: "hello"}
`})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := e.Admin(ctx, "/server_info")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(info), "/1.40.") {
		t.Errorf("server_info does not name Envoy 1.40: %.300s", info)
	}
	dump, err := e.Admin(ctx, "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dump), `"name": "direct"`) {
		t.Errorf("config_dump lacks the static listener")
	}
}

func TestAPIServerAcceptsCoreObjects(t *testing.T) {
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := "smoke-core"
	if err := env.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	c := env.Client.CoreV1()
	if _, err := c.ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := c.Services(ns).Create(ctx, webService(), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(svc.Spec.ClusterIP, "198.19.") {
		t.Errorf("ClusterIP %s is outside the test range %s", svc.Spec.ClusterIP, testenv.ServiceCIDR)
	}
	if _, err := c.Pods(ns).Create(ctx, webPod("web-0", "web"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods, err := c.Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("list pods: %v, %d items", err, len(pods.Items))
	}
}

func TestControllerManagerWritesEndpointSlice(t *testing.T) {
	env := testenv.Kube(t)
	env.StartControllerManager(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ns := "smoke-kcm"
	if err := env.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	c := env.Client.CoreV1()
	if _, err := c.Services(ns).Create(ctx, webService(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := c.Pods(ns).Create(ctx, webPod("web-0", "default"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Play kubelet: the pod runs, has an address, and is Ready.
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.0.10", PodIPs: []corev1.PodIP{{IP: "198.18.0.10"}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}, {Type: corev1.ContainersReady, Status: corev1.ConditionTrue}}}
	if _, err := c.Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *discoveryv1.Endpoint
	err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		slices, err := env.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
		if err != nil {
			return false, err
		}
		for _, s := range slices.Items {
			for i := range s.Endpoints {
				got = &s.Endpoints[i]
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no EndpointSlice endpoint for service web: %v", err)
	}
	if got.Addresses[0] != "198.18.0.10" || got.Conditions.Ready == nil || !*got.Conditions.Ready {
		t.Errorf("endpoint = %v ready=%v, want 198.18.0.10 ready", got.Addresses, got.Conditions.Ready)
	}
}

func webService() *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
}

func webPod(name, sa string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: testenv.NodeName,
			Containers: []corev1.Container{{Name: "app", Image: "nginx", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}
}

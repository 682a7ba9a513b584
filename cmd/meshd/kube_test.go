package main

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshd/meshd/internal/testenv"
)

// TestServeKubeWithEnvoy: meshd on the real apiserver, EndpointSlices from
// the real kube-controller-manager, a real Envoy as web-0's sidecar. The
// service's cluster in Envoy holds the ready pod; a second pod becoming
// Ready reaches Envoy as an endpoint; a Service with an unknown appProtocol
// (conversion) and a headless Service claiming another's endpoint addresses
// (translation) get Warning Events and the rest keeps working.
func TestServeKubeWithEnvoy(t *testing.T) {
	testenv.Need(t, "envoy")
	env := testenv.Kube(t)
	env.StartControllerManager(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const ns = "translate-demo"
	for _, n := range []string{"meshd-system", ns} {
		if err := env.FreshNamespace(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	c := env.Client.CoreV1()
	nsObj, err := c.Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Labels = map[string]string{"meshd.io/inject": "enabled"}
	if _, err := c.Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	bad := "carrier-pigeon"
	for _, svc := range []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "odd"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "odd"},
			Ports: []corev1.ServicePort{{Name: "x", Port: 81, AppProtocol: &bad}}}},
		// Two headless services of the same pods and port: each endpoint
		// address is claimed twice; the second in key order is left out.
		{ObjectMeta: metav1.ObjectMeta{Name: "hl-a"}, Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "hl-b"}, Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}},
	} {
		if _, err := c.Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	runPod(ctx, t, env, ns, "web-0", "198.18.0.10")

	dir := t.TempDir()
	caDir, xdsAddr, debugAddr := filepath.Join(dir, "ca"), freeAddr(t), freeAddr(t)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(sctx, []string{"serve", "--kubeconfig", env.Kubeconfig, "--ca-dir", caDir, "--xds-addr", xdsAddr, "--debug-addr", debugAddr}, io.Discard, io.Discard)
	}()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	waitHTTP(t, "http://"+debugAddr+"/readyz")
	envoy := startSidecar(ctx, t, caDir, xdsAddr, ns, "web-0", "default")
	waitEnvoy(ctx, t, envoy, "/clusters", "outbound|80|web.translate-demo::198.18.0.10:8080::")
	waitEnvoy(ctx, t, envoy, "/listeners", "inbound::0.0.0.0:15006")

	runPod(ctx, t, env, ns, "web-1", "198.18.0.11")
	waitEnvoy(ctx, t, envoy, "/clusters", "outbound|80|web.translate-demo::198.18.0.11:8080::")

	for obj, reason := range map[string]string{"odd": "UnknownAppProtocol", "hl-b": "AddressConflict"} {
		err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			evs, err := c.Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + obj})
			if err != nil {
				return false, err
			}
			for _, e := range evs.Items {
				if e.Reason == reason && e.Type == corev1.EventTypeWarning && e.Source.Component == "meshd" {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Errorf("no %s Warning Event on service %s: %v", reason, obj, err)
		}
	}
}

// runPod creates a pod and plays kubelet: Running, its IP, Ready.
func runPod(ctx context.Context, t *testing.T, env *testenv.Env, ns, name, ip string) {
	t.Helper()
	c := env.Client.CoreV1()
	pod, err := c.Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: testenv.NodeName,
			Containers: []corev1.Container{{Name: "app", Image: "nginx", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}, {Type: corev1.ContainersReady, Status: corev1.ConditionTrue}}}
	if _, err := c.Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

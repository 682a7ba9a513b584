package xds_test

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/k8s"
)

// BenchmarkEndpointWrite: what one EndpointSlice write costs meshd between
// the informer's event and the new snapshots (conversion, translation,
// publishing) with 10 proxies connected, at 10, 1,000 and 10,000 services
// of 10 endpoints. Issue #20's aim: the same cost at every size.
func BenchmarkEndpointWrite(b *testing.B) {
	for _, services := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", services), func(b *testing.B) {
			ctx := context.Background()
			st := benchState(services, 10)
			convert := k8s.NewConverter("cluster.local")
			snap, _ := convert.Convert(st)
			mesh, _ := benchMesh(b, snap, 10)
			if _, err := mesh.Update(ctx, snap); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				// The informer hands on a new object for every write, and
				// the watcher its kind's list patched, the object in its
				// place (see vec; the lists of the kinds no event came
				// for are the last state's).
				sl := st.Slices.At(0).DeepCopy()
				ready := i%2 == 0
				sl.Endpoints[0].Conditions.Ready = &ready
				next := *st
				p := st.Slices.Patch()
				p.Set(0, sl)
				next.Slices = p.Vec()
				st = &next
				snap, _ := convert.Convert(st)
				if _, err := mesh.Update(ctx, snap); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchState is the Kubernetes state of services × endpoints in 50 meshed
// namespaces: a ClusterIP Service, one EndpointSlice and a running pod per
// endpoint, each service under its own service account.
func benchState(services, endpoints int) *k8s.State {
	var st struct {
		Namespaces []*corev1.Namespace
		Services   []*corev1.Service
		Pods       []*corev1.Pod
		Slices     []*discoveryv1.EndpointSlice
	}
	for i := range 50 {
		st.Namespaces = append(st.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("ns%d", i), Labels: map[string]string{k8s.LabelInject: "enabled"}}})
	}
	port, name := int32(8080), "http"
	for i := range services {
		ns, svcName := fmt.Sprintf("ns%d", i%50), fmt.Sprintf("svc%d", i)
		st.Services = append(st.Services, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svcName},
			Spec: corev1.ServiceSpec{ClusterIP: fmt.Sprintf("198.19.%d.%d", i/250, i%250+1),
				Ports: []corev1.ServicePort{{Name: name, Port: 80}}}})
		sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svcName + "-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
			AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port}}}
		for j := range endpoints {
			n := i*endpoints + j
			ip := fmt.Sprintf("198.18.%d.%d", n/250, n%250+1)
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%d", svcName, j),
				UID: types.UID(fmt.Sprintf("uid-%d", n)), Annotations: map[string]string{k8s.AnnotationStatus: k8s.StatusInjected}},
				Spec:   corev1.PodSpec{ServiceAccountName: svcName},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip}}
			st.Pods = append(st.Pods, pod)
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod.Name}})
		}
		st.Slices = append(st.Slices, sl)
	}
	return &k8s.State{Namespaces: vec.Of(st.Namespaces), Services: vec.Of(st.Services), Pods: vec.Of(st.Pods), Slices: vec.Of(st.Slices)}
}

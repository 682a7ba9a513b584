package k8s_test

import (
	"maps"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/model"
)

// TestConvertInvalidNames: pods, services and policies named as the
// apiserver never names one (invalid UTF-8 once panicked the translation;
// dots make keys of two objects collide) are left out, each with a
// Problem; the objects beside them are converted.
func TestConvertInvalidNames(t *testing.T) {
	pod := func(ns, name, sa string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{k8s.AnnotationStatus: k8s.StatusInjected}},
			Spec: corev1.PodSpec{ServiceAccountName: sa}, Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.0.1"}}
	}
	svc := func(ns, name string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: "198.19.0.1", Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	}
	policy := func(ns, name string) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "meshd.io/v1alpha1", "kind": k8s.PolicyKind,
			"metadata": map[string]any{"name": name, "namespace": ns},
			"spec":     map[string]any{"selector": map[string]any{}, "action": "ALLOW", "rules": []any{map[string]any{}}}}}
	}
	st := &k8s.State{
		Pods:     vec.Of([]*corev1.Pod{pod("demo", "web-0.x", "web"), pod("demo", "a\xffb", ""), pod("demo", "api-0", "a/b"), pod("de.mo", "web-0", ""), pod("demo", strings.Repeat("x", 254), "")}),
		Services: vec.Of([]*corev1.Service{svc("demo", "web"), svc("demo", "a.b"), svc("demo", "9web"), svc("", "web"), svc("demo", "we\xffb")}),
		Policies: []*unstructured.Unstructured{policy("demo", "allow.all"), policy("demo", "a|b"), policy("de mo", "p")},
	}
	snap, problems := k8s.Convert(st, "cluster.local")
	if len(snap.Workloads) != 1 || snap.Workloads[0].Name != "web-0.x" || snap.Services.Len() != 1 || snap.Services.At(0).Name != "web" {
		t.Fatalf("workloads %+v, services %+v: want only web-0.x and web", snap.Workloads, snap.Services.Slice())
	}
	if got := len(snap.Workloads[0].Policies); got != 1 {
		t.Errorf("web-0.x has %d policies, want allow.all only", got)
	}
	var invalid []string
	for _, p := range problems {
		if p.Reason == "InvalidName" || p.Reason == k8s.PolicyInvalid {
			invalid = append(invalid, p.Kind+" "+p.Namespace+"/"+p.Name)
		}
	}
	want := []string{"AuthorizationPolicy de mo/p", "AuthorizationPolicy demo/a|b", "Pod de.mo/web-0", "Pod demo/" + strings.Repeat("x", 254),
		"Pod demo/a\xffb", "Pod demo/api-0", "Service /web", "Service demo/9web", "Service demo/a.b", "Service demo/we\xffb"}
	slices.Sort(invalid)
	slices.Sort(want)
	if !slices.Equal(invalid, want) {
		t.Errorf("problems for %q\nwant %q\n(all: %v)", invalid, want, problems)
	}
}

// TestConvertContainerPortOutOfRange: a container port outside 1-65535
// is skipped with a Problem (it once reached the inbound listener, whose
// port Envoy refuses, and with it the whole listener).
func TestConvertContainerPortOutOfRange(t *testing.T) {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web-0", Annotations: map[string]string{k8s.AnnotationStatus: k8s.StatusInjected}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: 8080}, {ContainerPort: 70000}, {ContainerPort: 0}, {ContainerPort: -1}, {ContainerPort: 65535}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.0.1"}}
	snap, problems := k8s.Convert(&k8s.State{Pods: vec.Of([]*corev1.Pod{p})}, "cluster.local")
	var ports []uint32
	for _, port := range snap.Workloads[0].Ports {
		ports = append(ports, port.Port)
	}
	if !slices.Equal(ports, []uint32{8080, 65535}) {
		t.Errorf("ports %v, want [8080 65535]", ports)
	}
	if len(problems) != 3 || problems[0].Reason != "InvalidPort" {
		t.Errorf("problems %v, want one InvalidPort per port out of range", problems)
	}
}

// TestProblemsOfOneNameInOrder: two objects of one name (a Source may list
// both) have their problems in the same order whichever is listed first,
// so that a Converter's problems are a fresh conversion's.
func TestProblemsOfOneNameInOrder(t *testing.T) {
	policy := func(uid string) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "meshd.io/v1alpha1", "kind": k8s.PolicyKind,
			"metadata": map[string]any{"name": "p", "namespace": "demo", "uid": uid}, "spec": map[string]any{"action": "MAYBE"}}}
	}
	a, b := policy("uid-a"), policy("uid-b")
	conv := k8s.NewConverter("cluster.local")
	for i, list := range [][]*unstructured.Unstructured{{a, b}, {b, a}, {a, b}} {
		_, problems := conv.Convert(&k8s.State{Policies: list})
		if len(problems) != 2 || problems[0].UID != "uid-a" || problems[1].UID != "uid-b" {
			t.Fatalf("list %d: problems %+v, want uid-a's then uid-b's", i, problems)
		}
	}
}

// TestHTTPRuleOnTCPPortOfOneName: of two policies of one name, the
// problem an HTTP rule on a TCP port raises names the same one's UID
// every time.
func TestHTTPRuleOnTCPPortOfOneName(t *testing.T) {
	policy := func(uid string) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "meshd.io/v1alpha1", "kind": k8s.PolicyKind,
			"metadata": map[string]any{"name": "p", "namespace": "demo", "uid": uid},
			"spec": map[string]any{"selector": map[string]any{}, "action": "ALLOW",
				"rules": []any{map[string]any{"to": map[string]any{"paths": []any{"/admin"}}}}}}}
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "db-0", Annotations: map[string]string{k8s.AnnotationStatus: k8s.StatusInjected}},
		Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: "db", Ports: []corev1.ContainerPort{{Name: "tcp", ContainerPort: 5432}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.0.1"}}
	a, b := policy("uid-a"), policy("uid-b")
	for i := range 20 {
		list := []*unstructured.Unstructured{a, b}
		if i%2 == 1 {
			list = []*unstructured.Unstructured{b, a}
		}
		_, problems := k8s.Convert(&k8s.State{Pods: vec.Of([]*corev1.Pod{pod}), Policies: list}, "cluster.local")
		if len(problems) != 1 || problems[0].Reason != k8s.PolicyHTTPRuleOnTCPPort || problems[0].UID != "uid-a" {
			t.Fatalf("run %d: problems %+v, want one %s of uid-a", i, problems, k8s.PolicyHTTPRuleOnTCPPort)
		}
	}
}

// TestConvertServicePortOutOfRange: a service port outside 1-65535 (the
// apiserver refuses one; a local directory does not) is skipped with a
// Problem naming it; the service's other ports are converted.
func TestConvertServicePortOutOfRange(t *testing.T) {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web"},
		Spec: corev1.ServiceSpec{ClusterIP: "198.19.0.1", Ports: []corev1.ServicePort{
			{Name: "http", Port: 80}, {Name: "big", Port: 70000}, {Name: "zero", Port: 0}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}}}
	snap, problems := k8s.Convert(&k8s.State{Services: vec.Of([]*corev1.Service{s})}, "cluster.local")
	if snap.Services.Len() != 1 || len(snap.Services.At(0).Ports) != 1 || snap.Services.At(0).Ports[0].Port != 80 {
		t.Fatalf("services %+v, want web with port 80 alone", snap.Services.Slice())
	}
	var reasons []string
	for _, p := range problems {
		reasons = append(reasons, p.Reason+" "+p.Name+": "+p.Message)
	}
	if len(problems) != 2 || problems[0].Reason != "InvalidPort" || problems[1].Reason != "InvalidPort" ||
		!strings.Contains(reasons[0]+reasons[1], "70000") || !strings.Contains(reasons[0]+reasons[1], "port 0") {
		t.Errorf("problems %q, want one InvalidPort for 70000 and one for 0 (none for the UDP port)", reasons)
	}
}

// TestConvertExcludedInboundPorts: a port the pod's annotation takes out of
// the interception is not one of its sidecar's inbound ports, and the
// pod's endpoints on it carry no identity (clients reach it in plaintext);
// its other ports keep theirs. An annotation that does not parse is
// reported and excludes nothing.
func TestConvertExcludedInboundPorts(t *testing.T) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{k8s.LabelInject: "enabled"}}}
	pod := func(name, ip, exclude string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name,
			Annotations: map[string]string{k8s.AnnotationStatus: k8s.StatusInjected, k8s.AnnotationExcludeInboundPorts: exclude}},
			Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9100}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip}}
	}
	http, metrics := "http", "metrics"
	port80, port9100 := int32(8080), int32(9100)
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web"}, Spec: corev1.ServiceSpec{ClusterIP: "198.19.0.1",
		Ports: []corev1.ServicePort{{Name: http, Port: 80}, {Name: metrics, Port: 9100}}}}
	slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: &http, Port: &port80}, {Name: &metrics, Port: &port9100}}}
	for _, p := range [][2]string{{"web-0", "198.18.0.1"}, {"web-1", "198.18.0.2"}} {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{p[1]}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "demo", Name: p[0]}})
	}
	st := &k8s.State{Namespaces: vec.Of([]*corev1.Namespace{ns}), Services: vec.Of([]*corev1.Service{svc}),
		Pods: vec.Of([]*corev1.Pod{pod("web-0", "198.18.0.1", "9100, 15021"), pod("web-1", "198.18.0.2", "9100,nope")}), Slices: vec.Of([]*discoveryv1.EndpointSlice{slice})}
	snap, problems := k8s.Convert(st, "cluster.local")
	web0, web1 := snap.Workload("web-0.demo"), snap.Workload("web-1.demo")
	if web0 == nil || web1 == nil {
		t.Fatalf("workloads %v", snap.Workloads)
	}
	if !slices.Equal(web0.Bypassed, []uint32{9100, 15021}) || slices.ContainsFunc(web0.Ports, func(p model.Port) bool { return p.Port == 9100 }) {
		t.Errorf("web-0: bypassed %v, ports %+v; want 9100 and 15021 bypassed, 9100 not an inbound port", web0.Bypassed, web0.Ports)
	}
	if len(web1.Bypassed) != 0 || !slices.ContainsFunc(web1.Ports, func(p model.Port) bool { return p.Port == 9100 }) {
		t.Errorf("web-1 (annotation that does not parse): bypassed %v, ports %+v; want nothing bypassed", web1.Bypassed, web1.Ports)
	}
	got := map[string]string{}
	for _, e := range snap.Services.At(0).Endpoints {
		got[e.Workload+"|"+e.PortName] = e.Identity
	}
	id := "spiffe://cluster.local/ns/demo/sa/default"
	want := map[string]string{"web-0.demo|http": id, "web-0.demo|metrics": "", "web-1.demo|http": id, "web-1.demo|metrics": id}
	if !maps.Equal(got, want) {
		t.Errorf("endpoint identities %v, want %v", got, want)
	}
	if len(problems) != 1 || problems[0].Reason != "InvalidAnnotation" || problems[0].Name != "web-1" || !strings.Contains(problems[0].Message, "nope") {
		t.Errorf("problems %+v, want one InvalidAnnotation for web-1 naming %q", problems, "nope")
	}
	// Incrementally: web-1's annotation mended, nothing else written; its
	// endpoint on 9100 loses its identity as in a fresh conversion.
	c := k8s.NewConverter("cluster.local")
	c.Convert(st)
	next := *st
	patch := st.Pods.Patch()
	patch.Set(1, pod("web-1", "198.18.0.2", "9100"))
	next.Pods = patch.Vec()
	incremental, _ := c.Convert(&next)
	fresh, _ := k8s.Convert(&next, "cluster.local")
	for _, e := range incremental.Services.At(0).Endpoints {
		if e.Workload == "web-1.demo" && e.PortName == metrics && e.Identity != "" {
			t.Errorf("after web-1's annotation was mended, its endpoint on 9100 still carries %q (fresh: %+v)", e.Identity, fresh.Services.At(0).Endpoints)
		}
	}
}

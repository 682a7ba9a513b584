package k8s_test

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/model"
)

// TestConverterIsConvert: a Converter fed a long sequence of states (objects
// added, replaced, rewritten unchanged, removed, lists shuffled, as
// informers hand them on)
// returns after every state exactly what converting that state from
// scratch returns: the same snapshot and the same problems.
func TestConverterIsConvert(t *testing.T) {
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 7))
		g := stateGen{r: r}
		l := g.initial()
		st := l.state(r, nil, nil)
		conv := k8s.NewConverter("cluster.local")
		var prevGot, prevWant *model.Snapshot
		for step := range 150 {
			got, gotProblems := conv.Convert(st)
			want, wantProblems := k8s.Convert(st, "cluster.local")
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d step %d (after %s): the converter's snapshot differs from a fresh conversion's:\n got %s\nwant %s", seed, step, g.last, dump(got), dump(want))
			}
			if prevGot != nil && !reflect.DeepEqual(prevGot, prevWant) {
				t.Fatalf("seed %d step %d (after %s): the snapshot handed on before changed", seed, step, g.last)
			}
			prevGot, prevWant = got, want
			if !reflect.DeepEqual(gotProblems, wantProblems) {
				t.Fatalf("seed %d step %d (after %s): problems differ:\n got %v\nwant %v", seed, step, g.last, gotProblems, wantProblems)
			}
			next := g.mutate(l)
			st, l = next.state(r, l, st), next
		}
	}
}

func dump(v any) string { return fmt.Sprintf("%+v", v) }

// stateGen makes random states of a few namespaces, pods, services, slices
// and policies, with enough invalid values to raise every kind of problem,
// and changes them one object at a time.
type stateGen struct {
	r    *rand.Rand
	n    int
	last string
}

func (g *stateGen) pick(options ...string) string { return options[g.r.IntN(len(options))] }

// lists are a state's lists as slices, as the generator edits them.
type lists struct {
	Namespaces []*corev1.Namespace
	Pods       []*corev1.Pod
	Services   []*corev1.Service
	Slices     []*discoveryv1.EndpointSlice
	Policies   []*unstructured.Unstructured
}

// state is l as a State after prev (made of prevL; nil: none) as the
// Watcher hands them on: a kind's list that is prevL's is prev's, a new
// one either prev's patched where its objects moved (the other chunks
// shared: see vec) or, half the time, a list of its own (as a Source
// lists them).
func (l *lists) state(r *rand.Rand, prevL *lists, prev *k8s.State) *k8s.State {
	if prevL == nil {
		prevL, prev = &lists{}, &k8s.State{}
	}
	return &k8s.State{Namespaces: relistedVec(r, prevL.Namespaces, prev.Namespaces, l.Namespaces),
		Pods: relistedVec(r, prevL.Pods, prev.Pods, l.Pods), Services: relistedVec(r, prevL.Services, prev.Services, l.Services),
		Slices: relistedVec(r, prevL.Slices, prev.Slices, l.Slices), Policies: l.Policies}
}

func relistedVec[T comparable](r *rand.Rand, prevList []T, prev vec.Vec[T], now []T) vec.Vec[T] {
	switch {
	case model.SameList(prevList, now):
		return prev
	case r.IntN(2) == 0:
		return patchedTo(prev, now)
	}
	return vec.Of(now)
}

// patchedTo is prev patched into now as the Watcher patches a kind's
// list: the tail popped or appended, the places that differ set (the
// chunks holding none of them shared with prev).
func patchedTo[T comparable](prev vec.Vec[T], now []T) vec.Vec[T] {
	p := prev.Patch()
	for p.Len() > len(now) {
		p.Pop()
	}
	for i, x := range now {
		switch {
		case i >= p.Len():
			p.Append(x)
		case p.At(i) != x:
			p.Set(i, x)
		}
	}
	return p.Vec()
}

func (g *stateGen) initial() *lists {
	st := &lists{}
	for i := range 3 {
		st.Namespaces = append(st.Namespaces, g.namespace(fmt.Sprintf("ns%d", i)))
	}
	for range 12 {
		st.Pods = append(st.Pods, g.pod(fmt.Sprintf("pod%d", g.r.IntN(16)), g.nsName()))
	}
	for i := range 6 {
		name, ns := fmt.Sprintf("svc%d", i), g.nsName()
		st.Services = append(st.Services, g.service(name, ns))
		st.Slices = append(st.Slices, g.slice(name, ns, 1))
	}
	for i := range 8 {
		st.Policies = append(st.Policies, g.policy(fmt.Sprintf("p%d", i), g.nsName()))
	}
	return st
}

func (g *stateGen) nsName() string { return fmt.Sprintf("ns%d", g.r.IntN(3)) }

func (g *stateGen) namespace(name string) *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}, Annotations: map[string]string{}}}
	if g.r.IntN(3) > 0 {
		ns.Labels[k8s.LabelInject] = "enabled"
	}
	if v := g.pick("", "", "PERMISSIVE", "bogus"); v != "" {
		ns.Labels[k8s.LabelMTLSMode] = v
	}
	if v := g.pick("", "", "./*", "ns0/svc1", "bad scope!"); v != "" {
		ns.Annotations[k8s.AnnotationEgress] = v
	}
	return ns
}

func (g *stateGen) pod(name, ns string) *corev1.Pod {
	g.n++
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID("uid-" + strconv.Itoa(g.n)),
		Labels: map[string]string{"app": g.pick("a", "b")}, Annotations: map[string]string{}},
		Spec:   corev1.PodSpec{ServiceAccountName: g.pick("", "sa1", "sa2")},
		Status: corev1.PodStatus{Phase: corev1.PodPhase(g.pick("Running", "Running", "Running", "Succeeded")), PodIP: fmt.Sprintf("198.18.0.%d", g.r.IntN(20)+1)}}
	if v := g.pick("", k8s.StatusInjected, k8s.StatusInjected, k8s.StatusSkipped+": hostNetwork"); v != "" {
		p.Annotations[k8s.AnnotationStatus] = v
	}
	if g.r.IntN(4) == 0 {
		p.Labels[k8s.LabelInject] = g.pick("true", "false")
	}
	if g.r.IntN(5) == 0 {
		p.Labels[k8s.LabelMTLSMode] = g.pick("STRICT", "nope")
	}
	if g.r.IntN(5) == 0 {
		p.Annotations[k8s.AnnotationServerFirstPorts] = g.pick("25", "8080", "9999,x")
	}
	if g.r.IntN(6) == 0 {
		p.Annotations[k8s.AnnotationDetectionTimeout] = g.pick("500ms", "1h", "soon")
	}
	if g.r.IntN(6) == 0 {
		p.Annotations[k8s.AnnotationEgress] = g.pick("./*", "bad scope!")
	}
	if g.r.IntN(5) == 0 {
		p.Annotations[k8s.AnnotationExcludeInboundPorts] = g.pick("8080", "25,9090", "x")
	}
	if g.r.IntN(2) == 0 {
		p.Spec.Containers = []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: g.pick("http", "tcp", "grpc-x"), ContainerPort: int32(g.pick2(8080, 25, 9090))}}}}
	}
	return p
}

func (g *stateGen) pick2(options ...int) int { return options[g.r.IntN(len(options))] }

func (g *stateGen) service(name, ns string) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{ClusterIP: g.pick("None", fmt.Sprintf("198.19.0.%d", g.r.IntN(4)+1))}}
	for i := range g.r.IntN(3) + 1 {
		p := corev1.ServicePort{Name: g.pick("http", "tcp", "grpc", "http2-x"), Port: int32(g.pick2(80, 81, 25, 8080))}
		if i > 0 && g.r.IntN(4) > 0 {
			p.Name += strconv.Itoa(i)
		}
		if g.r.IntN(5) == 0 {
			ap := g.pick("http", "mysql", "kubernetes.io/h2c", "weird")
			p.AppProtocol = &ap
		}
		s.Spec.Ports = append(s.Spec.Ports, p)
	}
	if g.r.IntN(12) == 0 {
		s.Spec.Type = corev1.ServiceTypeExternalName
	}
	if g.r.IntN(12) == 0 {
		s.Spec.Ports = nil
	}
	return s
}

func (g *stateGen) slice(svc, ns string, n int) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", svc, n), Namespace: ns,
		Labels: map[string]string{discoveryv1.LabelServiceName: svc}}, AddressType: discoveryv1.AddressTypeIPv4}
	for range g.r.IntN(2) + 1 {
		name, port := g.pick("http", "tcp", "grpc", "http1"), int32(g.pick2(8080, 25, 9090))
		sl.Ports = append(sl.Ports, discoveryv1.EndpointPort{Name: &name, Port: &port})
	}
	for range g.r.IntN(4) {
		ready := g.r.IntN(4) > 0
		pod := fmt.Sprintf("pod%d", g.r.IntN(16))
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("198.18.0.%d", g.r.IntN(20)+1)},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: g.pick(ns, ns, "ns1"), Name: pod}})
	}
	return sl
}

func (g *stateGen) policy(name, ns string) *unstructured.Unstructured {
	g.n++
	rule := map[string]any{"from": map[string]any{"serviceAccounts": []any{g.pick("ns0/sa1", "ns1/sa2", "ns2/sa1", "sa1")}}}
	if g.r.IntN(2) == 0 {
		rule["to"] = map[string]any{"paths": []any{"/admin"}}
	}
	spec := map[string]any{"selector": map[string]any{"matchLabels": map[string]any{"app": g.pick("a", "b")}},
		"action": g.pick("ALLOW", "DENY", "ALLOW", "ALLOW", "MAYBE"), "rules": []any{rule}}
	if g.r.IntN(3) == 0 {
		spec["ports"] = []any{int64(g.pick2(25, 8080))}
	}
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "meshd.io/v1alpha1", "kind": k8s.PolicyKind,
		"metadata": map[string]any{"name": name, "namespace": ns, "uid": "uid-" + strconv.Itoa(g.n)}, "spec": spec}}
	return u
}

// mutate returns the next state: one object added, replaced or removed
// (a new object: informers never change one in place), the lists in a new
// order.
func (g *stateGen) mutate(old *lists) *lists {
	st := &lists{Namespaces: cloneList(old.Namespaces), Pods: cloneList(old.Pods), Services: cloneList(old.Services),
		Slices: cloneList(old.Slices), Policies: cloneList(old.Policies)}
	switch op := g.r.IntN(14); op {
	case 0:
		i := g.r.IntN(len(st.Namespaces))
		st.Namespaces[i] = g.namespace(st.Namespaces[i].Name)
		g.last = "namespace " + st.Namespaces[i].Name + " changed"
	case 1:
		if len(st.Pods) > 0 {
			i := g.r.IntN(len(st.Pods))
			st.Pods[i] = g.pod(st.Pods[i].Name, st.Pods[i].Namespace)
			g.last = "pod " + st.Pods[i].Name + " changed"
		}
	case 2:
		p := g.pod(fmt.Sprintf("pod%d", g.r.IntN(16)), g.nsName())
		if !containsKey(st.Pods, p.Name, p.Namespace) {
			st.Pods = append(st.Pods, p)
		}
		g.last = "pod " + p.Name + " added"
	case 3:
		if len(st.Pods) > 0 {
			i := g.r.IntN(len(st.Pods))
			g.last = "pod " + st.Pods[i].Name + " removed"
			st.Pods = append(st.Pods[:i], st.Pods[i+1:]...)
		}
	case 4:
		if len(st.Slices) > 0 { // the same endpoints on another port
			i := g.r.IntN(len(st.Slices))
			sl := st.Slices[i].DeepCopy()
			port := int32(g.pick2(8080, 25, 9090, 7070))
			sl.Ports[0].Port = &port
			st.Slices[i] = sl
			g.last = "slice " + sl.Name + " port changed"
		}
	case 5, 6:
		if len(st.Slices) > 0 {
			i := g.r.IntN(len(st.Slices))
			sl := st.Slices[i]
			st.Slices[i] = g.slice(sl.Labels[discoveryv1.LabelServiceName], sl.Namespace, 1)
			st.Slices[i].Name = sl.Name
			g.last = "slice " + sl.Name + " changed"
		}
	case 7:
		if len(st.Services) > 0 {
			s := st.Services[g.r.IntN(len(st.Services))]
			sl := g.slice(s.Name, s.Namespace, g.n)
			g.n++
			st.Slices = append(st.Slices, sl)
			g.last = "slice " + sl.Name + " added"
		}
	case 8:
		i := g.r.IntN(len(st.Services))
		st.Services[i] = g.service(st.Services[i].Name, st.Services[i].Namespace)
		g.last = "service " + st.Services[i].Name + " changed"
	case 9:
		if len(st.Slices) > 0 {
			i := g.r.IntN(len(st.Slices))
			g.last = "slice " + st.Slices[i].Name + " removed"
			if g.r.IntN(2) == 0 { // as the Watcher's lists remove: the last in its place
				last := len(st.Slices) - 1
				st.Slices[i] = st.Slices[last]
				st.Slices = st.Slices[:last]
			} else {
				st.Slices = append(st.Slices[:i], st.Slices[i+1:]...)
			}
		}
	case 10:
		i := g.r.IntN(len(st.Policies) + 1)
		switch {
		case i == len(st.Policies):
			p := g.policy(fmt.Sprintf("p%d", g.n), g.nsName())
			st.Policies = append(st.Policies, p)
			g.last = "policy " + p.GetName() + " added"
		case g.r.IntN(2) == 0:
			g.last = "policy " + st.Policies[i].GetName() + " removed"
			st.Policies = append(st.Policies[:i], st.Policies[i+1:]...)
		default:
			st.Policies[i] = g.policy(st.Policies[i].GetName(), st.Policies[i].GetNamespace())
			g.last = "policy " + st.Policies[i].GetName() + " changed"
		}
	case 13: // a service gone, or one added
		if i := g.r.IntN(len(st.Services) + 1); i < len(st.Services) && len(st.Services) > 2 {
			g.last = "service " + st.Services[i].Name + " removed"
			st.Services = append(st.Services[:i], st.Services[i+1:]...)
		} else {
			svc := g.service(fmt.Sprintf("svc%d", g.r.IntN(9)), g.nsName())
			if !slices.ContainsFunc(st.Services, func(s *corev1.Service) bool { return s.Name == svc.Name && s.Namespace == svc.Namespace }) {
				st.Services = append(st.Services, svc)
			}
			g.last = "service " + svc.Name + " added"
		}
	case 11: // a policy written again with the same spec (its status, say)
		if len(st.Policies) > 0 {
			i := g.r.IntN(len(st.Policies))
			u := st.Policies[i].DeepCopy()
			u.SetResourceVersion(strconv.Itoa(g.n))
			g.n++
			st.Policies[i] = u
			g.last = "policy " + u.GetName() + " rewritten"
		}
	case 12: // a pod updated in place: new IP, labels or phase
		if len(st.Pods) > 0 {
			i := g.r.IntN(len(st.Pods))
			p := st.Pods[i].DeepCopy()
			switch g.r.IntN(3) {
			case 0:
				p.Status.PodIP = fmt.Sprintf("198.18.0.%d", g.r.IntN(20)+1)
			case 1:
				p.Labels["app"] = g.pick("a", "b")
			default:
				p.Status.Phase = corev1.PodPhase(g.pick("Running", "Succeeded"))
			}
			st.Pods[i] = p
			g.last = "pod " + p.Name + " updated"
		}
	}
	st.Namespaces = relisted(g.r, old.Namespaces, st.Namespaces)
	st.Pods = relisted(g.r, old.Pods, st.Pods)
	st.Services = relisted(g.r, old.Services, st.Services)
	st.Slices = relisted(g.r, old.Slices, st.Slices)
	st.Policies = relisted(g.r, old.Policies, st.Policies)
	return st
}

// relisted is a kind's list as the Watcher hands it on: the old list itself
// when the kind has the same objects (no event came; 1 in 4 is listed
// again, as after an event that changed nothing), else the new one, half
// the time in the generator's order (changes in place, as the Watcher's
// lists keep them), half in a random order (as a Source may list them).
func relisted[T comparable](r *rand.Rand, old, now []T) []T {
	if len(old) == len(now) && r.IntN(4) > 0 {
		same := true
		for _, o := range now {
			same = same && slices.Contains(old, o)
		}
		if same {
			return old
		}
	}
	if r.IntN(2) == 0 {
		shuffle(r, now)
	}
	return now
}

func cloneList[T any](s []T) []T { return append([]T(nil), s...) }

func shuffle[T any](r *rand.Rand, s []T) {
	r.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
}

func containsKey(pods []*corev1.Pod, name, ns string) bool {
	for _, p := range pods {
		if p.Name == name && p.Namespace == ns {
			return true
		}
	}
	return false
}

// TestConverterNamespaceListedTwice: a namespace gone while another is
// listed twice (as a local directory may list it) is still gone for its
// pods, as in a fresh conversion.
func TestConverterNamespaceListedTwice(t *testing.T) {
	g := stateGen{r: rand.New(rand.NewPCG(1, 1))}
	a, b := g.namespace("ns0"), g.namespace("ns1")
	b.Labels[k8s.LabelInject] = "enabled"
	pod := g.pod("pod0", "ns1")
	delete(pod.Annotations, k8s.AnnotationStatus)
	delete(pod.Labels, k8s.LabelInject)
	pod.Status.Phase = corev1.PodRunning
	conv := k8s.NewConverter("cluster.local")
	conv.Convert(&k8s.State{Namespaces: vec.Of([]*corev1.Namespace{a, b}), Pods: vec.Of([]*corev1.Pod{pod})})
	st := &k8s.State{Namespaces: vec.Of([]*corev1.Namespace{a, a}), Pods: vec.Of([]*corev1.Pod{pod})}
	got, _ := conv.Convert(st)
	want, _ := k8s.Convert(st, "cluster.local")
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %s\nwant %s", dump(got), dump(want))
	}
}

// TestConverterSliceListedTwice: EndpointSlice lists compared by chunk and
// place (as the Watcher hands them on: patched, see kept) still convert as
// a fresh conversion when a slice is there twice (as a local directory may
// list it), moves, or leaves, in short lists and in lists of several
// chunks.
func TestConverterSliceListedTwice(t *testing.T) {
	g := stateGen{r: rand.New(rand.NewPCG(2, 2))}
	st := g.initial().state(g.r, nil, nil)
	a, b := st.Slices.At(0), st.Slices.At(1)
	conv := k8s.NewConverter("cluster.local")
	check := func(step int, next *k8s.State) {
		t.Helper()
		got, _ := conv.Convert(next)
		want, _ := k8s.Convert(next, "cluster.local")
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d: got %s\nwant %s", step, dump(got), dump(want))
		}
	}
	// Two objects of one name, as two files of a local directory may
	// define it: which a service reads first does not depend on the order
	// they came in.
	a2 := a.DeepCopy()
	for i := range a2.Endpoints {
		ready := !ptrOr(a2.Endpoints[i].Conditions.Ready, true)
		a2.Endpoints[i].Conditions.Ready = &ready
	}
	for i, list := range [][]*discoveryv1.EndpointSlice{{a, b}, {a, a}, {a}, {b, a}, {b}, {a, b, a}, {b}, {a, a2}, {a2, a}, {a2, b, a}, {a}} {
		next := *st
		next.Slices = vec.Of(list)
		check(i, &next)
	}
	// Several chunks of slices of a few services, patched a few places at
	// a time: replaced, copied into another place, the last moved into a
	// removed one's place, added.
	var pool []*discoveryv1.EndpointSlice
	for i := range 3 * vec.ChunkLen {
		pool = append(pool, g.slice(fmt.Sprintf("svc%d", i%8), "ns0", 1))
	}
	next := *st
	next.Slices = vec.Of(slices.Clone(pool))
	check(0, &next)
	for step := range 300 {
		p := next.Slices.Patch()
		for range 1 + g.r.IntN(3) {
			switch n := p.Len(); {
			case n > 0 && g.r.IntN(4) == 0:
				i := g.r.IntN(n)
				p.Set(i, p.At(n-1))
				p.Pop()
			case n > 0 && g.r.IntN(3) == 0:
				p.Set(g.r.IntN(n), p.At(g.r.IntN(n)))
			case n > 0 && g.r.IntN(2) == 0:
				p.Set(g.r.IntN(n), pool[g.r.IntN(len(pool))])
			default:
				p.Append(g.slice(fmt.Sprintf("svc%d", g.r.IntN(8)), "ns0", 1))
			}
		}
		st := next
		st.Slices = p.Vec()
		next = st
		check(step+1, &next)
	}
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// TestTerminatingEndpointsServeWhenNoneReady: as kube-proxy, a port with a
// ready endpoint uses only the ready ones; a port with none uses those
// terminating but still serving (never one that stopped serving), and
// topology hints are then ignored.
func TestTerminatingEndpointsServeWhenNoneReady(t *testing.T) {
	const doc = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [198.18.0.1], conditions: {ready: %s}, hints: {forZones: [{name: a}]}}
- {addresses: [198.18.0.2], conditions: {ready: false, serving: true, terminating: true}, hints: {forZones: [{name: a}]}}
- {addresses: [198.18.0.3], conditions: {ready: false, serving: false, terminating: true}, hints: {forZones: [{name: a}]}}
`
	for _, tc := range []struct {
		first, want string
		hints       bool
	}{
		{"true", "198.18.0.1", true},
		{"false", "198.18.0.2", false},
	} {
		st, err := k8s.StateFromYAML([]byte(strings.Replace(doc, "%s", tc.first, 1)))
		if err != nil {
			t.Fatal(err)
		}
		snap, _ := k8s.Convert(st, "cluster.local")
		svc := snap.Service("web.demo")
		var used []string
		for _, e := range svc.Endpoints {
			if e.Ready {
				used = append(used, e.Address)
			}
		}
		if got := strings.Join(used, " "); got != tc.want || svc.ZoneHints != tc.hints {
			t.Errorf("first endpoint ready=%s: used %q, zone hints %v; want %q, %v", tc.first, got, svc.ZoneHints, tc.want, tc.hints)
		}
	}
}

// TestOutboundTrafficAnnotation: a pod's meshd.io/outbound-traffic, else
// its namespace's; an unknown value is reported and read as
// registry-only; a pod without interception is told it is not enforced.
func TestOutboundTrafficAnnotation(t *testing.T) {
	const doc = `apiVersion: v1
kind: Namespace
metadata: {name: locked, labels: {meshd.io/inject: enabled}, annotations: {meshd.io/outbound-traffic: registry-only}}
---
apiVersion: v1
kind: Namespace
metadata: {name: open, labels: {meshd.io/inject: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: locked}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: locked, annotations: {meshd.io/outbound-traffic: allow-any}}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: open}
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: open, annotations: {meshd.io/outbound-traffic: registry_only}}
---
apiVersion: v1
kind: Pod
metadata: {name: e, namespace: locked, annotations: {meshd.io/interception: none}}
`
	st, err := k8s.StateFromYAML([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	snap, problems := k8s.Convert(st, "cluster.local")
	for key, want := range map[string]bool{"a.locked": true, "b.locked": false, "c.open": false, "d.open": true, "e.locked": true} {
		if w := snap.Workload(key); w == nil || w.RegistryOnly != want {
			t.Errorf("%s: registry-only %v, want %v", key, w != nil && w.RegistryOnly, want)
		}
	}
	var got []string
	for _, p := range problems {
		got = append(got, p.Name+":"+p.Reason)
	}
	slices.Sort(got)
	if want := "d:InvalidAnnotation e:RegistryOnlyNotEnforced"; strings.Join(got, " ") != want {
		t.Errorf("problems %q, want %q", got, want)
	}
}

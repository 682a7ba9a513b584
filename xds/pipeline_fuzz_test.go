package xds_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	cachetypes "github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/model"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
	"github.com/meshd/meshd/xds/publish"
	"github.com/meshd/meshd/xds/resource"
	"github.com/meshd/meshd/xds/translate"
)

// FuzzPipeline: whatever the Kubernetes objects hold (ports out of range
// or twice, names odd or empty, addresses that do not parse or are IPv6,
// slices naming no service, pods without IP or namespace, annotations and
// labels meshd reads holding nonsense), conversion and translation never
// panic, Update publishes (a bad object is a Problem, never an error that
// holds back the rest of the mesh), and every resource a proxy gets passes
// Envoy's validation. Over three states (a few objects changed each time,
// as the Watcher hands them on) the Converter and the Translator kept from
// one to the next give what fresh ones do.
func FuzzPipeline(f *testing.F) {
	// The seeds (FuzzPipeline's inputs are choices: see fuzzInput): no
	// objects; mostly odd choices (0xff is the last option, and chance's
	// yes, of most); states of every size from fixed random choices
	// (testdata/fuzz/FuzzPipeline holds the inputs that found bugs).
	f.Add([]byte{})
	f.Add([]byte(strings.Repeat("\xff", 400)))
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 40 {
		seed := make([]byte, 100+i*15)
		for j := range seed {
			seed[j] = byte(r.Uint32())
		}
		f.Add(seed)
	}
	// The proxies' secrets (the publisher sends nothing before them): one
	// certificate for all, as only the mesh configuration is looked at.
	pki := newTestPKI(f)
	cert := pki.issue(webID, webNode)
	secrets := resource.Resources{resourcev3.SecretType: []cachetypes.Resource{sds.CertificateSecret(cert), sds.BundleSecret(cert.BundlePEM)}}
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fuzzInput{data: data}
		st := in.state()
		states := []*k8s.State{st, in.mutate(st)}
		states = append(states, in.mutate(states[1]))
		ctx := context.Background()
		cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
		pub := publish.New(cache)
		mesh := xds.NewMesh(pub, slog.New(slog.DiscardHandler))
		conv := k8s.NewConverter("cluster.local")
		var tr translate.Translator
		var nodes []string
		var peers []xds.Peer
		for step, st := range states {
			snap, problems := conv.Convert(st)
			want, wantProblems := k8s.Convert(st, "cluster.local")
			if !reflect.DeepEqual(snap, want) {
				t.Fatalf("state %d: the converter's snapshot differs from a fresh conversion's:\n got %+v\nwant %+v", step, snap, want)
			}
			if !reflect.DeepEqual(problems, wantProblems) {
				t.Fatalf("state %d: problems differ from a fresh conversion's:\n got %v\nwant %v", step, problems, wantProblems)
			}
			// A Translator kept from state to state translates as a fresh one.
			got, gotProblems := tr.Shared(snap)
			fresh, freshProblems := translate.Shared(snap)
			if err := sameResources(translate.Slices(got), fresh); err != nil || !reflect.DeepEqual(gotProblems, freshProblems) {
				t.Fatalf("state %d: the translation differs from a fresh one: %v; problems %v, want %v", step, err, gotProblems, freshProblems)
			}
			for _, w := range snap.Workloads {
				if w.Egress != nil {
					got, _ := tr.Scoped(snap, w.Egress)
					fresh, _ := translate.Shared(snap.Scoped(w.Egress))
					if err := sameResources(translate.Slices(got), fresh); err != nil {
						t.Fatalf("state %d: scope %v: the translation differs from a fresh one: %v", step, w.Egress, err)
					}
				}
			}
			if _, err := mesh.Update(ctx, snap); err != nil {
				t.Fatalf("state %d: Update: %v", step, err)
			}
			if step == 0 {
				// Proxies bound to a few of the workloads, and one whose pod
				// is not (yet) known; a refused one (its identity is not its
				// pod's) is a clean error.
				for i, w := range snap.Workloads {
					if i == 3 {
						break
					}
					id := ca.Identity{TrustDomain: "cluster.local", Namespace: w.Namespace, ServiceAccount: w.ServiceAccount}
					if peer := (xds.Peer{NodeID: w.Key(), Identity: id}); mesh.AddProxy(ctx, peer) == nil {
						nodes, peers = append(nodes, w.Key()), append(peers, peer)
					}
				}
				ghost := xds.Peer{NodeID: "ghost.ns0", Identity: ca.Identity{TrustDomain: "cluster.local", Namespace: "ns0", ServiceAccount: "default"}}
				if err := mesh.AddProxy(ctx, ghost); err != nil {
					t.Fatalf("AddProxy of a pod not in the model: %v", err)
				}
				nodes, peers = append(nodes, ghost.NodeID), append(peers, ghost)
				for _, node := range nodes {
					if err := pub.SetProxy(ctx, node, secrets); err != nil {
						t.Fatalf("secrets of %s: %v", node, err)
					}
				}
				if _, err := mesh.Update(ctx, snap); err != nil {
					t.Fatalf("state %d, proxies added: Update: %v", step, err)
				}
			}
			// What the mesh published from state to state is what a fresh
			// mesh publishes for this state alone (an update that goes over
			// only what moved misses nothing).
			freshCache := freshMesh(t, snap, peers, secrets)
			for _, node := range nodes {
				ps, err := cache.GetSnapshot(node)
				if err != nil {
					t.Fatalf("state %d: proxy %s has no snapshot: %v", step, node, err)
				}
				want, err := freshCache.GetSnapshot(node)
				if err != nil {
					t.Fatalf("state %d: proxy %s has no snapshot from a fresh mesh: %v", step, node, err)
				}
				if err := sameSnapshot(ps, want); err != nil {
					t.Fatalf("state %d: proxy %s: the snapshot differs from a fresh mesh's: %v", step, node, err)
				}
				for _, typ := range []resourcev3.Type{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType} {
					for name, r := range ps.GetResources(typ) {
						v, ok := r.(interface{ ValidateAll() error })
						if !ok {
							t.Fatalf("%T has no validator", r)
						}
						if err := v.ValidateAll(); err != nil {
							t.Fatalf("state %d: proxy %s: %s %q is invalid: %v", step, node, typ, name, err)
						}
					}
				}
			}
		}
	})
}

// freshMesh publishes snap to a new mesh with peers connected, each with
// secrets; it returns the cache it published into.
func freshMesh(t *testing.T, snap *model.Snapshot, peers []xds.Peer, secrets resource.Resources) cachev3.SnapshotCache {
	t.Helper()
	ctx := context.Background()
	cache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	pub := publish.New(cache)
	mesh := xds.NewMesh(pub, slog.New(slog.DiscardHandler))
	// Connected before the model is known, as after a restart of meshd: a
	// proxy whose pod now runs under another identity stays connected
	// (with no inbound side), as it does when its pod changes.
	for _, p := range peers {
		if err := mesh.AddProxy(ctx, p); err != nil {
			t.Fatalf("fresh mesh: AddProxy %s: %v", p.NodeID, err)
		}
		if err := pub.SetProxy(ctx, p.NodeID, secrets); err != nil {
			t.Fatalf("fresh mesh: secrets of %s: %v", p.NodeID, err)
		}
	}
	if _, err := mesh.Update(ctx, snap); err != nil {
		t.Fatalf("fresh mesh: Update: %v", err)
	}
	return cache
}

// sameSnapshot reports how two proxy snapshots differ (nil: they do not).
func sameSnapshot(a, b cachev3.ResourceSnapshot) error {
	for _, typ := range []resourcev3.Type{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType, resourcev3.SecretType} {
		ra, rb := a.GetResources(typ), b.GetResources(typ)
		if len(ra) != len(rb) {
			return fmt.Errorf("%d %s, want %d (%v, want %v)", len(ra), typ, len(rb), slices.Sorted(maps.Keys(ra)), slices.Sorted(maps.Keys(rb)))
		}
		for name, r := range rb {
			if !proto.Equal(ra[name], r) {
				return fmt.Errorf("%s %s differs", typ, name)
			}
		}
	}
	return nil
}

// sameResources reports how two translations differ (nil: they do not).
func sameResources(a, b translate.Resources) error {
	for _, typ := range slices.Sorted(maps.Keys(b)) {
		if len(a[typ]) != len(b[typ]) {
			return fmt.Errorf("%d %s, want %d", len(a[typ]), typ, len(b[typ]))
		}
		for i := range b[typ] {
			if !proto.Equal(a[typ][i], b[typ][i]) {
				return fmt.Errorf("%s %s differs", typ, cachev3.GetResourceName(b[typ][i]))
			}
		}
	}
	if len(a) != len(b) {
		return fmt.Errorf("%d types, want %d", len(a), len(b))
	}
	return nil
}

// fuzzInput reads choices from the fuzzer's bytes; past the end every
// choice is the first option (zero): no more objects, nothing odd.
type fuzzInput struct {
	data []byte
	n    int // objects made, for distinct UIDs
}

func (in *fuzzInput) byte() byte {
	if len(in.data) == 0 {
		return 0
	}
	b := in.data[0]
	in.data = in.data[1:]
	return b
}

func (in *fuzzInput) intn(n int) int { return int(in.byte()) % n }

// chance is true one time in oneIn (never past the end).
func (in *fuzzInput) chance(oneIn int) bool { return in.intn(oneIn) == oneIn-1 }

func (in *fuzzInput) pick(options ...string) string { return options[in.intn(len(options))] }

// rawOption, among the options of mostly, is the input's next bytes.
const rawOption = "<raw>"

// mostly returns common seven times in eight, else one of odd.
func (in *fuzzInput) mostly(common string, odd ...string) string {
	if !in.chance(8) {
		return common
	}
	if s := in.pick(odd...); s != rawOption {
		return s
	}
	return in.raw()
}

func (in *fuzzInput) mostlyInt(common int32, odd ...int32) int32 {
	if !in.chance(8) {
		return common
	}
	return in.pickInt(odd...)
}

func (in *fuzzInput) pickInt(options ...int32) int32 { return options[in.intn(len(options))] }

// raw is a string of the input's next bytes (any bytes: invalid UTF-8,
// separators meshd uses in keys, ...).
func (in *fuzzInput) raw() string {
	n := min(in.intn(12), len(in.data))
	s := string(in.data[:n])
	in.data = in.data[n:]
	return s
}

// name is an object name: mostly a few that collide on purpose, sometimes
// empty, very long, or odd.
func (in *fuzzInput) name(base string) string {
	switch in.intn(32) {
	case 28:
		return ""
	case 29:
		return strings.Repeat("x", 300)
	case 30:
		return in.pick("a.b", "A_B", "a/b", "a|b", "a b", "ä", "a,b", "*", ".", "..", "-a-", "a\x00b", "\xff")
	case 31:
		return in.raw()
	}
	return fmt.Sprintf("%s%d", base, in.intn(3))
}

func (in *fuzzInput) ns() string {
	if in.chance(12) {
		return in.pick("ghost", "", "ns.x", "NS0", "ns0 ", rawOption)
	}
	return fmt.Sprintf("ns%d", in.intn(3))
}

func (in *fuzzInput) ip() string {
	return in.mostly(fmt.Sprintf("198.18.0.%d", in.intn(4)+1), "", "none", "::1", "fd00::1", "::ffff:198.18.0.3",
		"198.18.0.256", "0.0.0.0", "127.0.0.1", "127.0.0.2", "fe80::1%eth0", "198.018.0.1", " 198.18.0.1", rawOption)
}

func (in *fuzzInput) annotations(values map[string][]string) map[string]string {
	m := map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(values)) {
		if in.chance(3) {
			if m[k] = in.pick(values[k]...); m[k] == rawOption {
				m[k] = in.raw()
			}
		}
	}
	return m
}

var (
	nsLabels = map[string][]string{
		k8s.LabelInject:   {"enabled", "disabled", "ENABLED", "true", ""},
		k8s.LabelMTLSMode: {"STRICT", "permissive", "PERMISSIVE", "bogus", ""},
		"app":             {"a", "b"},
	}
	nsAnnotations = map[string][]string{
		k8s.AnnotationEgress: {"./*", "*/*", "", ",", "./", "/", "a/b/c", "ns1/svc0", "*/svc1", "./*,*/*", "bad scope!", "ns0/" + strings.Repeat("s", 70)},
	}
	podLabels = map[string][]string{
		k8s.LabelInject:   {"true", "false", "TRUE", ""},
		k8s.LabelMTLSMode: {"STRICT", "PERMISSIVE", "nope", ""},
		"app":             {"a", "b", ""},
	}
	podAnnotations = map[string][]string{
		k8s.AnnotationStatus:              {k8s.StatusInjected, k8s.StatusSkipped, k8s.StatusSkipped + ": ", k8s.StatusSkipped + ": hostNetwork", "weird"},
		k8s.AnnotationProxyID:             {"", "p-1", "p-1"},
		k8s.AnnotationInterception:        {"none", "NONE", ""},
		k8s.AnnotationServerFirstPorts:    {"25", "8080", "0", "-1", "65536", "99999999999", "x,,", ",", " 25 , 8080 ", "25,25", ""},
		k8s.AnnotationDetectionTimeout:    {"500ms", "1ns", "-5s", "9999h", "NaN", "10ms", "1m", "1m0.000000001s", ""},
		k8s.AnnotationEgress:              {"./*", "*/*", "", ",", "./", "/", "a/b/c", "ns1/svc0", "*/svc1", "./*,*/*", "bad scope!"},
		k8s.AnnotationExcludeInboundPorts: {"8080", "25,8080", "0", "65536", "x", " 9090 ,", ""},
	}
)

// state builds a small state of hostile objects.
func (in *fuzzInput) state() *k8s.State {
	var st struct {
		Namespaces []*corev1.Namespace
		Pods       []*corev1.Pod
		Services   []*corev1.Service
		Slices     []*discoveryv1.EndpointSlice
		Policies   []*unstructured.Unstructured
	}
	for range in.intn(4) {
		st.Namespaces = append(st.Namespaces, in.namespace(in.ns()))
	}
	for range in.intn(7) {
		st.Pods = append(st.Pods, in.pod())
	}
	for range in.intn(6) {
		st.Services = append(st.Services, in.service())
	}
	for range in.intn(6) {
		st.Slices = append(st.Slices, in.slice(st.Services))
	}
	for range in.intn(4) {
		st.Policies = append(st.Policies, in.policy())
	}
	return &k8s.State{Namespaces: vec.Of(st.Namespaces), Pods: vec.Of(st.Pods), Services: vec.Of(st.Services), Slices: vec.Of(st.Slices), Policies: st.Policies}
}

// deleted is v without its element at i, the others in their order (a
// Source's list; the Watcher's moves the last into the place).
func deleted[T any](v vec.Vec[T], i int) vec.Vec[T] {
	p := v.Patch()
	for j := i; j < v.Len()-1; j++ {
		p.Set(j, v.At(j+1))
	}
	p.Pop()
	return p.Vec()
}

// setOrAppend is v with x at i, or added when i is Len.
func setOrAppend[T any](v vec.Vec[T], i int, x T) vec.Vec[T] {
	p := v.Patch()
	if i < v.Len() {
		p.Set(i, x)
	} else {
		p.Append(x)
	}
	return p.Vec()
}

func (in *fuzzInput) namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: in.annotations(nsLabels), Annotations: in.annotations(nsAnnotations)}}
}

func (in *fuzzInput) uid() types.UID {
	in.n++
	if in.chance(4) {
		return types.UID(in.pick("dup", ""))
	}
	return types.UID(fmt.Sprintf("uid-%d", in.n))
}

func (in *fuzzInput) pod() *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: in.name("pod"), Namespace: in.ns(), UID: in.uid(),
		Labels: in.annotations(podLabels), Annotations: in.annotations(podAnnotations)},
		Spec: corev1.PodSpec{ServiceAccountName: in.mostly(in.pick("", "sa1", "sa2"), "SA", "a/b", "a.b", rawOption), HostNetwork: in.chance(8)},
		Status: corev1.PodStatus{Phase: corev1.PodPhase(in.mostly("Running", "Pending", "Succeeded", "Failed", "", "Bogus")),
			PodIP: in.ip()}}
	for range in.intn(3) {
		c := corev1.Container{Name: in.pick("app", "app", "")}
		for range in.intn(4) {
			c.Ports = append(c.Ports, corev1.ContainerPort{Name: in.mostly(in.pick("http", "tcp", "grpc-x"), "http2", "", "HTTP", rawOption),
				ContainerPort: in.mostlyInt(in.pickInt(8080, 25, 9090), 0, -1, 65535, 65536, 70000, 15001, 15006),
				Protocol:      corev1.Protocol(in.mostly("TCP", "", "UDP", "SCTP", "tcp"))})
		}
		p.Spec.Containers = append(p.Spec.Containers, c)
	}
	p.Spec.NodeName = nodeOf(p.Status.PodIP)
	if z := zoneOf(p.Status.PodIP); z != "" {
		p.Labels[corev1.LabelTopologyZone] = z
	}
	if strings.HasSuffix(p.Status.PodIP, ".2") { // from the address drawn: no input byte
		p.Annotations[k8s.AnnotationOutboundTraffic] = "registry-only"
	}
	if in.chance(6) {
		p.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: in.pick(k8s.ContainerProxy, k8s.ContainerInit, "other"),
			Image: in.pick("meshd:dev", rawOption), State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: in.pick("ErrImagePull", "ImagePullBackOff", "Bogus"), Message: in.raw()}}}}
	}
	return p
}

func (in *fuzzInput) service() *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: in.name("svc"), Namespace: in.ns(), UID: in.uid()},
		Spec: corev1.ServiceSpec{ClusterIP: in.mostly(fmt.Sprintf("198.19.0.%d", in.intn(3)+1), "None", "", "fd00::10", "bogus", "0.0.0.0", "198.18.0.1", rawOption),
			Type: corev1.ServiceType(in.mostly("ClusterIP", "", "ExternalName", "NodePort", "LoadBalancer", "Bogus"))}}
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		s.Spec.ExternalName = in.pick("example.com", "", rawOption)
	}
	// Type "" and NodePort are ClusterIP services too: the three differ
	// only by affinity and internal traffic policy, so a step can change
	// either alone (no input byte is read for them, so the corpus keeps
	// its meaning).
	switch s.Spec.Type {
	case "":
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	case corev1.ServiceTypeNodePort:
		local := corev1.ServiceInternalTrafficPolicyLocal
		s.Spec.InternalTrafficPolicy = &local
	}
	ports := in.intn(3) + 1
	if in.chance(8) {
		ports = 0
	}
	for i := range ports {
		// Mostly distinct names and numbers (a port declared twice skips
		// the service).
		p := corev1.ServicePort{Name: in.mostly([]string{"http", "tcp", "grpc-x"}[i], "http", "", "HTTP", "http2-x", "a.b", rawOption),
			Port:     in.mostlyInt([]int32{80, 25, 8080}[i], 80, 81, 0, -1, 65535, 65536, 15001, 15006),
			Protocol: corev1.Protocol(in.mostly("TCP", "", "UDP", "bogus"))}
		switch in.intn(4) {
		case 0:
			p.TargetPort = intstr.FromInt32(in.pickInt(0, 8080, -1, 70000))
		case 1:
			p.TargetPort = intstr.FromString(in.pick("http", "nomatch", ""))
		}
		if in.chance(3) {
			ap := in.pick("http", "HTTP", "mysql", "kubernetes.io/h2c", "kubernetes.io/ws", "grpc", "tcp", "", "weird", rawOption)
			if ap == rawOption {
				ap = in.raw()
			}
			p.AppProtocol = &ap
		}
		s.Spec.Ports = append(s.Spec.Ports, p)
	}
	return s
}

// slice makes an EndpointSlice, mostly of one of the services (and of
// their pods' names).
// nodeOf is the node of a fuzzed address (its last digit's parity; ""
// for none): read from the address already drawn, so no input byte.
func nodeOf(ip string) string {
	if ip == "" {
		return ""
	}
	return []string{"node-a", "node-b"}[ip[len(ip)-1]%2]
}

// zoneOf is the zone of a fuzzed address, read as nodeOf: 198.18.0.1 and
// .2 in zone-a, .3 and .4 in zone-b (so a zone spans both nodes), ""
// for other addresses.
func zoneOf(ip string) string {
	if !strings.HasPrefix(ip, "198.18.0.") || len(ip) != len("198.18.0.1") {
		return ""
	}
	if ip[len(ip)-1] <= '2' {
		return "zone-a"
	}
	return "zone-b"
}

func (in *fuzzInput) slice(services []*corev1.Service) *discoveryv1.EndpointSlice {
	ns, svc := in.ns(), in.name("svc")
	if i := in.intn(len(services) + 1); i < len(services) && !in.chance(4) {
		ns, svc = services[i].Namespace, services[i].Name
	}
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: in.name("sl"), Namespace: ns, UID: in.uid(), Labels: map[string]string{}},
		AddressType: discoveryv1.AddressType(in.mostly("IPv4", "IPv6", "FQDN", "", "bogus"))}
	if !in.chance(6) {
		sl.Labels[discoveryv1.LabelServiceName] = svc
	}
	switch in.intn(12) {
	case 0: // no ports
	case 1:
		sl.Ports = []discoveryv1.EndpointPort{}
	default:
		for i := range in.intn(3) + 1 {
			var ep discoveryv1.EndpointPort
			if !in.chance(10) {
				// As the services name their ports.
				name := in.mostly([]string{"http", "tcp", "grpc-x"}[i], "http", "", "http2-x", "nomatch")
				ep.Name = &name
			}
			if !in.chance(10) {
				port := in.mostlyInt(in.pickInt(8080, 25, 9090), 0, -1, 65535, 65536, 15006)
				ep.Port = &port
			}
			sl.Ports = append(sl.Ports, ep)
		}
	}
	for range in.intn(4) + 1 {
		e := discoveryv1.Endpoint{}
		for range in.mostlyInt(1, 0, 2, 3) {
			e.Addresses = append(e.Addresses, in.ip())
		}
		if len(e.Addresses) > 0 {
			node := nodeOf(e.Addresses[0]) // the node of the pod of that address
			e.NodeName = &node
			// Hinted for the zone of that address, but .4 (its service
			// then has a ready endpoint without hints: not zone-hinted),
			// and for its node, but .3.
			if z := zoneOf(e.Addresses[0]); z != "" && !strings.HasSuffix(e.Addresses[0], ".4") {
				e.Zone = &z
				e.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: z}}}
				if !strings.HasSuffix(e.Addresses[0], ".3") { // and for its node, but .3
					e.Hints.ForNodes = []discoveryv1.ForNode{{Name: node}}
				}
			}
		}
		if in.chance(2) {
			ready := in.chance(3)
			e.Conditions.Ready = &ready
		}
		if !in.chance(4) {
			e.TargetRef = &corev1.ObjectReference{Kind: in.mostly("Pod", "Node", ""), Namespace: in.mostly(ns, "ns1", ""), Name: in.name("pod")}
		}
		sl.Endpoints = append(sl.Endpoints, e)
	}
	return sl
}

func (in *fuzzInput) policy() *unstructured.Unstructured {
	rule := map[string]any{}
	switch in.intn(4) {
	case 0:
		rule["from"] = map[string]any{"serviceAccounts": []any{in.pick("ns0/sa1", "sa1", "x/y/z", "")}}
	case 1:
		rule["from"] = map[string]any{"namespaces": []any{in.pick("ns0", "*", "a*", "")}}
	case 2:
		rule["to"] = map[string]any{"paths": []any{in.pick("/admin", "/a*", "", "*")}, "methods": []any{in.pick("GET", "")}}
	}
	spec := map[string]any{"selector": map[string]any{"matchLabels": map[string]any{"app": in.pick("a", "b")}},
		"action": in.pick("ALLOW", "DENY", "MAYBE", ""), "rules": []any{rule}}
	if in.chance(3) {
		spec["ports"] = []any{int64(in.pickInt(25, 8080, 0, -1, 70000))}
	}
	if in.chance(8) {
		spec = map[string]any{"selector": "x", "rules": int64(7)}
	}
	return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "meshd.io/v1alpha1", "kind": k8s.PolicyKind,
		"metadata": map[string]any{"name": in.name("p"), "namespace": in.ns(), "uid": string(in.uid())}, "spec": spec}}
}

// mutate returns the next state as the Watcher hands it on: a few objects
// replaced by new ones, removed or added, a kind's list the same slice
// when nothing of it changed.
func (in *fuzzInput) mutate(old *k8s.State) *k8s.State {
	next := *old
	for range in.intn(5) + 1 {
		switch in.intn(10) {
		case 0:
			var ns *corev1.Namespace
			if i := in.intn(next.Namespaces.Len() + 1); i < next.Namespaces.Len() {
				ns = in.namespace(next.Namespaces.At(i).Name)
				next.Namespaces = setOrAppend(next.Namespaces, i, ns)
			} else {
				next.Namespaces = setOrAppend(next.Namespaces, i, in.namespace(in.ns()))
			}
		case 1, 2:
			i, p := in.intn(next.Pods.Len()+1), in.pod()
			if i < next.Pods.Len() && in.chance(2) { // the same pod, changed
				p.Name, p.Namespace = next.Pods.At(i).Name, next.Pods.At(i).Namespace
			}
			next.Pods = setOrAppend(next.Pods, i, p)
		case 3:
			if next.Pods.Len() > 0 {
				next.Pods = deleted(next.Pods, in.intn(next.Pods.Len()))
			}
		case 4:
			i, s := in.intn(next.Services.Len()+1), in.service()
			if i < next.Services.Len() {
				s.Name, s.Namespace = next.Services.At(i).Name, next.Services.At(i).Namespace
			}
			next.Services = setOrAppend(next.Services, i, s)
		case 5:
			if next.Services.Len() > 0 {
				next.Services = deleted(next.Services, in.intn(next.Services.Len()))
			}
		case 6, 7:
			i, sl := in.intn(next.Slices.Len()+1), in.slice(next.Services.Slice())
			if i < next.Slices.Len() && in.chance(2) {
				was := next.Slices.At(i)
				sl.Name, sl.Namespace, sl.Labels = was.Name, was.Namespace, was.Labels
			}
			next.Slices = setOrAppend(next.Slices, i, sl)
		case 8:
			if next.Slices.Len() > 0 {
				next.Slices = deleted(next.Slices, in.intn(next.Slices.Len()))
			}
		case 9:
			next.Policies = slices.Clone(next.Policies)
			if i := in.intn(len(next.Policies) + 1); i < len(next.Policies) {
				next.Policies[i] = in.policy()
			} else {
				next.Policies = append(next.Policies, in.policy())
			}
		}
	}
	return &next
}

// Package translate turns the mesh model into Envoy resources. It is pure:
// a model.Snapshot in, resources out, no I/O, no clock, no globals.
//
// Where it sits in the pipeline: k8s builds the model; Shared runs once per
// model change and produces what every proxy shares (the outbound listener,
// clusters, routes, endpoints); Proxy runs per connected proxy and produces
// only what is its own (the inbound listener and its local clusters). The
// xds Publisher merges both with the proxy's secrets into its snapshot.
//
// Traffic path: the app's outbound connection is redirected to the outbound
// listener (15001), matched by original destination (service ClusterIP and
// port, or a headless service's endpoint) and sent to the service's cluster,
// which speaks mutual TLS to endpoints that have a sidecar and checks their
// SPIFFE IDs. The peer's sidecar receives it on the inbound listener (15006),
// which requires a mesh client certificate (STRICT) or also accepts
// plaintext (PERMISSIVE), and forwards to the app on 127.0.0.1:<port>.
package translate

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/model"
)

// Ports of the sidecar's listeners (the iptables rules redirect to them).
const (
	OutboundPort = 15001
	InboundPort  = 15006
)

// Names of resources that are not per service.
const (
	OutboundListener   = "outbound"
	InboundListener    = "inbound"
	PassthroughCluster = "PassthroughCluster"
	// BlackHoleCluster has no endpoints: a connection sent to it is
	// closed (see selfChain).
	BlackHoleCluster = "BlackHoleCluster"
)

// Resources are xDS resources by type URL. Every slice is sorted by name.
type Resources = map[resourcev3.Type][]types.Resource

// ClusterName returns the outbound cluster (and route and endpoint set) name
// of a service port: outbound|<port>|<name>.<namespace>.
func ClusterName(svc *model.Service, port uint32) string {
	return fmt.Sprintf("outbound|%d|%s", port, svc.Key())
}

// directClusterName is the cluster for connections straight to a mesh
// endpoint of a headless service (original destination, mutual TLS).
func directClusterName(svc *model.Service, port uint32) string {
	return fmt.Sprintf("outbound-direct|%d|%s", port, svc.Key())
}

// InboundClusterName returns the cluster that reaches the app on a port of
// the proxy's own pod (at the connection's original destination):
// inbound|<port> for TCP ports, inbound-http|<port> for HTTP, HTTP/2 and
// gRPC ports (which speak the client's HTTP protocol to the app: see
// setProtocol).
func InboundClusterName(p model.Port) string {
	if p.Protocol.IsHTTP() {
		return fmt.Sprintf("inbound-http|%d", p.Port)
	}
	return fmt.Sprintf("inbound|%d", p.Port)
}

// InboundUndeclaredCluster reaches the app, at the connection's original
// destination, on a port the mesh does not know (PERMISSIVE pods only: see
// undeclaredChain).
const InboundUndeclaredCluster = "inbound|undeclared"

// localClusterName is InboundClusterName's counterpart for sidecars without
// interception (forwarding to 127.0.0.1).
func localClusterName(p model.Port) string { return "local-" + InboundClusterName(p) }

// Shared returns the resources every proxy shares: the outbound listener;
// per service port a cluster, its endpoints and (for HTTP ports) its route
// configuration; and the local clusters the inbound listeners forward to
// (127.0.0.1:<port>, the same for every pod with that port). Problems it
// finds in the model (two services claiming one address and port) are
// returned; the first service in key order keeps the address.
func Shared(snap *model.Snapshot) (Resources, []model.Problem) {
	var t Translator
	res, problems := t.Shared(snap)
	return Slices(res), problems
}

// Lists are resources by type URL as the Translator hands them on, each
// type's sorted by name, as a vec.Vec: a change patches the last lists in
// the places it touched (an endpoint change: the chunks holding the
// endpoint sets it changed), so whoever prepares them next (xds/resource)
// finds the change by comparing chunks, and nothing copies 10,000
// entries for one.
type Lists = map[resourcev3.Type]vec.Vec[types.Resource]

// Slices is l's resources as slices.
func Slices(l Lists) Resources {
	out := make(Resources, len(l))
	for t, v := range l {
		out[t] = v.Slice()
	}
	return out
}

// Translator is Shared for a sequence of snapshots: it keeps each service's
// resources and gives back the same values for a service that did not
// change, so that a change translates (and, in the publisher, encodes) only
// the services it touched. Not safe for concurrent use; the zero value is
// ready.
type Translator struct {
	services map[string]*serviceOut // by service key
	// byModel is services by the model value they were translated from
	// (found without building the key or comparing).
	byModel   map[*model.Service]*serviceOut
	local     map[string]types.Resource
	listeners map[string]*listenerv3.Listener // the last outbound listener, by scope key
	used      map[string]bool                 // scopes translated since the last Shared
	// outbound is, by scope key, the outbound chains last worked out and
	// what from: the same services' chains give the same result.
	outbound map[string]*outboundChains
	// results are the scopes' last translations, by scope key.
	results map[string]*result
	// filters are the scopes' services, by scope key, followed from
	// snapshot to snapshot; meshServices are the services of the last
	// Shared's snapshot and of the one before (prevServices), and moves
	// what changed between them (found once, for every scope).
	filters                    map[string]*scopeFilter
	meshServices, prevServices vec.Vec[*model.Service]
	moves                      []model.ServiceMove
	movesOK, movesFound        bool
	// locals are the local clusters of the last Shared's workloads, which
	// Scoped (of the same snapshot) reuses.
	locals []types.Resource
	// localsOf are the workloads the locals were found from (never
	// mutated: the same pointers are the same workloads).
	localsOf []*model.Workload
	// perClient are the services translated whose endpoints depend on
	// the client (model.Service.PerClient: node-local, zone-hinted), by
	// key (see PerClient); perClientGen counts their changes, and
	// perClientList is them sorted, as of perClientListGen.
	perClient                      map[string]*model.Service
	perClientGen, perClientListGen uint64
	perClientList                  []*model.Service
}

// PerClientServices returns the per-client services of the last Shared's
// snapshot, sorted by key, and a generation that moves whenever one of
// them changed, came or went.
func (t *Translator) PerClientServices() ([]*model.Service, uint64) {
	if t.perClientListGen != t.perClientGen {
		t.perClientList = make([]*model.Service, 0, len(t.perClient))
		for _, svc := range t.perClient {
			t.perClientList = append(t.perClientList, svc)
		}
		slices.SortFunc(t.perClientList, func(a, b *model.Service) int { return strings.Compare(a.Key(), b.Key()) })
		t.perClientListGen = t.perClientGen
	}
	return t.perClientList, t.perClientGen
}

// notePerClient records a service translated anew (or its key gone: nil)
// among the per-client ones.
func (t *Translator) notePerClient(key string, svc *model.Service) {
	_, was := t.perClient[key]
	switch {
	case svc != nil && svc.PerClient():
		if t.perClient == nil {
			t.perClient = map[string]*model.Service{}
		}
		t.perClient[key] = svc
	case was:
		delete(t.perClient, key)
	default:
		return
	}
	t.perClientGen++
}

// serviceOut is what a service translates to, and from what.
type serviceOut struct {
	// from is the model service it was translated from (a snapshot's
	// services are never mutated: the same pointer is the same service);
	// svc is a deep copy of it, compared when the pointer differs.
	from   *model.Service
	svc    model.Service
	maxAge time.Duration
	res    Resources // clusters, endpoint sets, routes
	chains *serviceChains
	ids    []string // the identities its clusters accept
}

// serviceChains are a service's outbound filter chains (kept, the same
// value, when only its endpoints change).
type serviceChains struct {
	ports    []portChains
	directOf []types.Resource // per port: the headless direct cluster, or nil
}

// outboundChains are a scope's outbound filter chains, the address
// conflicts found and the direct clusters of the headless services that
// got chains, worked out from services' chains (from, in order).
type outboundChains struct {
	from     []*serviceChains
	chains   []*listenerv3.FilterChain
	problems []model.Problem
	directs  []types.Resource
}

// endpointsOnly reports whether next differs from prev in nothing but the
// endpoints of a ClusterIP service, with the same identities (ids): what
// its clusters, routes and filter chains are made of did not change.
func endpointsOnly(prev, next *serviceOut, ids []string) bool {
	a, b := prev.svc, next.svc
	return a.ClusterIP != "" && a.ClusterIP == b.ClusterIP && a.Namespace == b.Namespace && a.Name == b.Name &&
		a.ClientIPAffinity == b.ClientIPAffinity && a.NodeLocal == b.NodeLocal && a.ZoneHints == b.ZoneHints && a.NodeHints == b.NodeHints && prev.maxAge == next.maxAge && slices.Equal(a.Ports, b.Ports) && slices.Equal(prev.ids, ids)
}

// portChains are the outbound chains one service port asks for: its
// ClusterIP's, or one per mesh endpoint of a headless service.
type portChains struct {
	chains []addrChain
}

type addrChain struct {
	ip    string
	port  uint32
	chain *listenerv3.FilterChain
}

// Shared translates snap, reusing what it translated before for services
// that did not change, and forgets services no longer in snap.
func (t *Translator) Shared(snap *model.Snapshot) (Lists, []model.Problem) {
	// Listeners of scopes not translated since the last Shared go.
	for scope := range t.listeners {
		if !t.used[scope] {
			delete(t.listeners, scope)
			delete(t.outbound, scope)
			delete(t.results, scope)
			delete(t.filters, scope)
		}
	}
	t.used = map[string]bool{}
	t.prevServices, t.meshServices, t.movesFound = t.meshServices, snap.Services, false
	res, problems := t.translate(snap, "")
	// Every service of snap is in t.services now: it holds more only when
	// services went.
	if len(t.services) != snap.Services.Len() {
		keep := make(map[string]bool, snap.Services.Len())
		for svc := range snap.Services.Values() {
			keep[svc.Key()] = true
		}
		for key, out := range t.services {
			if !keep[key] {
				delete(t.services, key)
				delete(t.byModel, out.from)
				t.notePerClient(key, nil)
			}
		}
	}
	return res, problems
}

// Scoped translates snap as a sidecar with scope e sees it (Shared of
// snap.Scoped(e)), from and into the same per-service results as Shared.
// snap must be the snapshot Shared was last given.
func (t *Translator) Scoped(snap *model.Snapshot, e model.Egress) (Lists, []model.Problem) {
	return t.ScopedKey(snap, e.Key(), e)
}

// ScopedKey is Scoped with e's key (e.Key()) given: a caller that keeps it
// does not join the scope's entries again for every scope on every change.
func (t *Translator) ScopedKey(snap *model.Snapshot, key string, e model.Egress) (Lists, []model.Problem) {
	scoped := *snap
	scoped.Services = t.scopedServices(key, e, snap.Services)
	return t.translate(&scoped, key)
}

// scopeFilter is a scope's services (out) of the mesh's (from).
type scopeFilter struct {
	scope     *model.Scope
	from, out vec.Vec[*model.Service]
}

// maxMoves bounds the services found changed in their places between two
// snapshots, past which each scope filters the services again.
const maxMoves = 64

// scopedServices returns the services of scope e (key) among services, the
// snapshot's: the ones found for the last snapshot when nothing of the
// scope moved, patched when services of it changed in their places, found
// again only when the scope gained or lost a service (or the services came
// or went). An endpoint change costs each scope a lookup, not a pass over
// the mesh's services.
func (t *Translator) scopedServices(key string, e model.Egress, services vec.Vec[*model.Service]) vec.Vec[*model.Service] {
	if t.filters == nil {
		t.filters = map[string]*scopeFilter{}
	}
	f := t.filters[key]
	switch {
	case f == nil:
		f = &scopeFilter{scope: e.Compile()}
		t.filters[key] = f
	case f.from.Same(services):
		return f.out
	case f.from.Same(t.prevServices) && services.Same(t.meshServices):
		if !t.movesFound {
			t.moves, t.movesOK = model.ServicesMoved(t.prevServices, t.meshServices, maxMoves)
			t.movesFound = true
		}
		if t.movesOK {
			if out, ok := f.scope.Follow(f.out, t.moves); ok {
				f.from, f.out = services, out
				return out
			}
		}
	}
	f.from, f.out = services, f.scope.Filter(services)
	return f.out
}

// translate translates snap; scope keys the outbound listener kept for the
// next translation of the same scope.
func (t *Translator) translate(snap *model.Snapshot, scope string) (Lists, []model.Problem) {
	if t.services == nil {
		t.services, t.local, t.listeners = map[string]*serviceOut{}, map[string]types.Resource{}, map[string]*listenerv3.Listener{}
		t.byModel, t.outbound, t.results = map[*model.Service]*serviceOut{}, map[string]*outboundChains{}, map[string]*result{}
	}
	if t.used == nil {
		t.used = map[string]bool{}
	}
	last := t.results[scope]
	ob := t.outbound[scope]
	outs, moved := t.serviceResults(snap, last)
	sameChains := ob != nil && len(ob.from) == outs.Len()
	for _, i := range moved {
		sameChains = sameChains && ob.from[i] == outs.At(i).chains
	}
	if !sameChains {
		from := make([]*serviceChains, 0, outs.Len())
		for out := range outs.Values() {
			from = append(from, out.chains)
		}
		ob = outbound(snap.Services, from)
		t.outbound[scope] = ob
	}
	// The listener is rebuilt only when its chains changed (services
	// added, removed, readdressed; an endpoint change keeps it).
	t.used[scope] = true
	l := t.listeners[scope]
	if l == nil || !slices.Equal(serviceChainsOf(l), ob.chains) {
		l = outboundListener(ob.chains)
		t.listeners[scope] = l
	}
	if scope == "" {
		if !sameWorkloads(t.localsOf, snap.Workloads) {
			t.locals, t.localsOf = t.localClusters(snap), snap.Workloads
		}
	}
	// The same outbound chains are the same listener (it was kept above).
	if last != nil && last.ob == ob && slices.Equal(last.locals, t.locals) {
		if res, ok := last.patched(outs, moved); ok {
			t.results[scope] = &result{services: snap.Services, maxAge: snap.ConnectionMaxAge, outs: outs, res: res, pos: last.pos, ob: ob, locals: t.locals}
			return res, ob.problems
		}
	}
	res := Resources{}
	add := func(typ resourcev3.Type, r types.Resource) { res[typ] = append(res[typ], r) }
	add(resourcev3.ClusterType, t.cached(PassthroughCluster, func() types.Resource { return passthroughCluster() }))
	add(resourcev3.ClusterType, t.cached(BlackHoleCluster, func() types.Resource { return blackHoleCluster() }))
	for out := range outs.Values() {
		for typ, items := range out.res {
			res[typ] = append(res[typ], items...)
		}
	}
	res[resourcev3.ClusterType] = append(res[resourcev3.ClusterType], ob.directs...)
	add(resourcev3.ListenerType, l)
	res[resourcev3.ClusterType] = append(res[resourcev3.ClusterType], t.locals...)
	sortResources(res)
	lists := make(Lists, len(res))
	for typ, items := range res {
		lists[typ] = vec.Of(items)
	}
	t.results[scope] = newResult(snap, outs, lists, ob, t.locals)
	return lists, ob.problems
}

// serviceResults are the results of snap's services, in snap's order, and the
// places (moved, in order) where they are not last's. Where snap's
// services are last's patched (the same number, a snapshot's chunks shared
// with the one before: see vec), only the chunks not shared are gone over,
// and the results are last's patched in the same places: an endpoint
// change costs the chunk its service is in, not a pass over 10,000.
func (t *Translator) serviceResults(snap *model.Snapshot, last *result) (outs vec.Vec[*serviceOut], moved []int) {
	svcs := snap.Services
	if last == nil || last.services.Len() != svcs.Len() || last.maxAge != snap.ConnectionMaxAge {
		out := make([]*serviceOut, svcs.Len())
		for i, svc := range svcs.All() {
			out[i] = t.service(snap, svc)
			moved = append(moved, i)
		}
		return vec.Of(out), moved
	}
	p := last.outs.Patch()
	for b := range svcs.Chunks() {
		if svcs.SameChunk(last.services, b) {
			continue
		}
		for j, svc := range svcs.Chunk(b) {
			// A service at the place it had in the scope's last translation
			// (the same value) is that translation's.
			if i := b*vec.ChunkLen + j; last.outs.At(i).from != svc {
				p.Set(i, t.service(snap, svc))
				moved = append(moved, i)
			}
		}
	}
	return p.Vec(), moved
}

// result is a scope's last translation and what it was made of: the
// services' results (in order), the outbound chains (and so the listener)
// and local clusters; pos is each resource's place in its sorted list, by
// type and name.
type result struct {
	// services are the snapshot's the result was made from, with its
	// connection age bound.
	services vec.Vec[*model.Service]
	maxAge   time.Duration
	outs     vec.Vec[*serviceOut]
	res      Lists
	pos      map[resourcev3.Type]map[string]int
	ob       *outboundChains
	locals   []types.Resource
}

func newResult(snap *model.Snapshot, outs vec.Vec[*serviceOut], res Lists, ob *outboundChains, locals []types.Resource) *result {
	r := &result{services: snap.Services, maxAge: snap.ConnectionMaxAge, outs: outs, res: res, ob: ob, locals: locals, pos: make(map[resourcev3.Type]map[string]int, len(res))}
	for typ, items := range res {
		m := make(map[string]int, items.Len())
		for i, it := range items.All() {
			m[cachev3.GetResourceName(it)] = i
		}
		r.pos[typ] = m
	}
	return r
}

// patched returns the last result with the resources of the services in
// outs (the same services, some translated again into resources of the
// same names: an endpoint change) in place of the old ones: sorted lists
// patched (see vec), not built and sorted again (the lists handed on are
// never changed). moved are the places where outs differ from the last
// result's (none else is looked at). ok is false when outs are not such.
func (r *result) patched(outs vec.Vec[*serviceOut], moved []int) (res Lists, ok bool) {
	if outs.Len() != r.outs.Len() {
		return nil, false
	}
	res = r.res
	patches := map[resourcev3.Type]*vec.Patch[types.Resource]{}
	for _, i := range moved {
		out, prev := outs.At(i), r.outs.At(i)
		if out == prev {
			continue
		}
		if len(out.res) != len(prev.res) {
			return nil, false
		}
		for typ, items := range out.res {
			old := prev.res[typ]
			if len(items) != len(old) {
				return nil, false
			}
			for j, it := range items {
				if it == old[j] {
					continue
				}
				name := cachev3.GetResourceName(it)
				at, found := r.pos[typ][name]
				if !found || name != cachev3.GetResourceName(old[j]) {
					return nil, false
				}
				p := patches[typ]
				if p == nil {
					p = r.res[typ].Patch()
					patches[typ] = p
				}
				p.Set(at, it)
			}
		}
	}
	if len(patches) > 0 {
		res = maps.Clone(r.res)
		for typ, p := range patches {
			res[typ] = p.Vec()
		}
	}
	return res, true
}

// outbound works out the outbound chains of services (from: each one's
// chains): the first service in key order keeps an address and port two
// claim.
func outbound(services vec.Vec[*model.Service], from []*serviceChains) *outboundChains {
	var cs chainSet
	ob := &outboundChains{from: from}
	for i, svc := range services.All() {
		for j, pc := range from[i].ports {
			added := false
			for _, c := range pc.chains {
				if cs.add(c.ip, c.port, svc, c.chain) {
					added = true
				}
			}
			if d := from[i].directOf[j]; d != nil && added {
				ob.directs = append(ob.directs, d)
			}
		}
	}
	ob.chains, ob.problems = cs.chains, cs.problems
	return ob
}

// sameWorkloads reports whether a and b hold the same workloads: the same
// list (the converter hands on its last one when no workload moved; 100,000
// comparisons saved) or equal ones.
func sameWorkloads(a, b []*model.Workload) bool {
	return model.SameList(a, b) || slices.Equal(a, b)
}

// localClusters are the clusters the inbound sides forward to: one per
// distinct port (and kind) of the workloads.
func (t *Translator) localClusters(snap *model.Snapshot) []types.Resource {
	var out []types.Resource
	// What a local cluster's name is made of: its name is built once per
	// distinct one, not once per port of every workload (10,000 names on
	// every pod change at 10,000 workloads).
	type local struct {
		port                 uint32
		http, noInterception bool
	}
	seen := map[local]bool{}
	undeclared := false
	for _, w := range snap.Workloads {
		if w.Mode == model.ModePermissive && !w.NoInterception && !undeclared {
			undeclared = true
			out = append(out, t.cached(InboundUndeclaredCluster, func() types.Resource { return undeclaredCluster() }))
		}
		for _, p := range w.Ports {
			k := local{p.Port, p.Protocol.IsHTTP(), w.NoInterception}
			if seen[k] {
				continue
			}
			seen[k] = true
			name, build := InboundClusterName(p), inboundCluster
			if w.NoInterception {
				name, build = localClusterName(p), localCluster
			}
			out = append(out, t.cached(name, func() types.Resource { return build(p) }))
		}
	}
	return out
}

// cached returns the resource named name built before, or builds it. Only
// for resources that depend on nothing but their name.
func (t *Translator) cached(name string, build func() types.Resource) types.Resource {
	r, ok := t.local[name]
	if !ok {
		r = build()
		t.local[name] = r
	}
	return r
}

// service returns svc's resources: the ones translated before when neither
// the service nor the connection age bound changed.
func (t *Translator) service(snap *model.Snapshot, svc *model.Service) *serviceOut {
	if out := t.byModel[svc]; out != nil && out.maxAge == snap.ConnectionMaxAge {
		return out
	}
	key := svc.Key()
	prev := t.services[key]
	if prev != nil {
		delete(t.byModel, prev.from)
	}
	if prev != nil && prev.maxAge == snap.ConnectionMaxAge && reflect.DeepEqual(prev.svc, *svc) {
		prev.from = svc
		t.byModel[svc] = prev
		if svc.PerClient() {
			t.perClient[key] = svc // the same content: no generation
		}
		return prev
	}
	out := &serviceOut{from: svc, svc: *svc, maxAge: snap.ConnectionMaxAge, res: Resources{}}
	out.svc.Ports, out.svc.Endpoints = slices.Clone(svc.Ports), slices.Clone(svc.Endpoints)
	t.services[key], t.byModel[svc] = out, out
	add := func(typ resourcev3.Type, r types.Resource) { out.res[typ] = append(out.res[typ], r) }
	ids := identities(svc)
	t.notePerClient(key, svc)
	if prev != nil && endpointsOnly(prev, out, ids) {
		// Only endpoints moved: the clusters, routes and filter chains are
		// the same values (so the outbound listener, thousands of chains,
		// is not rebuilt and encoded again).
		for typ, items := range prev.res {
			if typ != resourcev3.EndpointType {
				out.res[typ] = items
			}
		}
		for _, p := range svc.Ports {
			if !svc.PerClient() {
				add(resourcev3.EndpointType, loadAssignment(ClusterName(svc, p.Port), svc, p))
			}
		}
		out.chains, out.ids = prev.chains, prev.ids
		return out
	}
	out.ids, out.chains = ids, &serviceChains{}
	for _, p := range svc.Ports {
		name := ClusterName(svc, p.Port)
		if !svc.PerClient() { // each proxy's own (see PerClient)
			add(resourcev3.ClusterType, serviceCluster(snap, svc, p, name, ids))
			add(resourcev3.EndpointType, loadAssignment(name, svc, p))
		}
		if p.Protocol.IsHTTP() {
			add(resourcev3.RouteType, routeConfig(name, name, svc.ClientIPAffinity))
		}
		c := out.chains
		if svc.ClusterIP != "" {
			c.ports = append(c.ports, portChains{chains: []addrChain{{svc.ClusterIP, p.Port, outboundChain(name, svc.ClusterIP, p, svc.ClientIPAffinity)}}})
			c.directOf = append(c.directOf, nil)
			continue
		}
		c.ports = append(c.ports, portChains{chains: directChains(svc, p)})
		c.directOf = append(c.directOf, boundAge(directCluster(directClusterName(svc, p.Port), sni(svc), p.Protocol, ids), p.Protocol, ids, snap.ConnectionMaxAge))
	}
	return out
}

// Proxy returns a proxy's own resources: the inbound listener with a filter
// chain per port of its workload (forwarding to the shared local clusters),
// and per HTTP port its route (with the port's authorization rules).
// A workload without ports gets no inbound listener (Envoy refuses one
// without filter chains): connections redirected to it are refused.
//
// A workload without interception gets, instead, listeners on real
// addresses (directListeners).
func Proxy(snap *model.Snapshot, w *model.Workload) Resources {
	res := Resources{}
	if w.NoInterception {
		if ls := directListeners(snap, w); len(ls) > 0 {
			res[resourcev3.ListenerType] = ls
			addRoutes(res, inboundRoutes(w))
		}
		return res
	}
	if w.RegistryOnly {
		res[resourcev3.ClusterType] = []types.Resource{registryOnlyPassthrough()}
	}
	if len(w.Ports) == 0 && w.Mode != model.ModePermissive {
		return res
	}
	res[resourcev3.ListenerType] = []types.Resource{inboundListener(snap, w)}
	addRoutes(res, inboundRoutes(w))
	return res
}

// addRoutes adds the inbound HTTP ports' routes (RDS, with the
// authorization rules), if any.
func addRoutes(res Resources, routes []types.Resource) {
	if len(routes) > 0 {
		res[resourcev3.RouteType] = routes
	}
}

// identities returns the distinct SPIFFE IDs of a service's mesh endpoints,
// ready or not (so readiness changes stay EDS-only), sorted.
func identities(svc *model.Service) []string {
	seen := map[string]bool{}
	var ids []string
	for _, e := range svc.Endpoints {
		if e.Identity != "" && !seen[e.Identity] {
			seen[e.Identity] = true
			ids = append(ids, e.Identity)
		}
	}
	sortStrings(ids)
	return ids
}

// sni is the server name upstream TLS sends: the service's DNS name (for
// the server's logs; identity is checked by SPIFFE ID, not by name).
func sni(svc *model.Service) string { return svc.Name + "." + svc.Namespace + ".svc" }

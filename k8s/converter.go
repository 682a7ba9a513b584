package k8s

import (
	"cmp"
	"maps"
	"reflect"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/model"
)

// Converter is Convert for a sequence of states. It keeps what each object
// converted to, by object: informers hand on a new object for every change
// and the same one otherwise. A state converts again only what changed or
// depends on what changed:
//   - a pod, when it or its namespace changed;
//   - a service, when it, its EndpointSlices, or what its endpoints read of
//     their pods (present, meshed, identity) changed;
//   - a workload's ports, policies and server-first marks, when its pod,
//     the ports services resolve to it, or its namespace's policies changed.
//
// The rest of a conversion is a pass over the objects of a kind whose list
// is new, comparing pointers; a list handed on again (the same Vec, as the
// Watcher hands on a kind no event came for) is not gone over at all, and
// an EndpointSlice list patched in a few places (see kept) only in the
// chunks not shared with the last one (an endpoint write costs its chunk,
// not a pass over every slice). Pods and services are passed over when
// their list moved (a pod write costs a pass over the pods; the workloads
// list is built again when a workload changed). Snapshots share the
// services and workloads that did not change (none is ever mutated once
// handed on), the services as a vec.Vec patched where services changed.
// Not safe for concurrent use.
type Converter struct {
	// RootNamespace, if set before the first Convert, is the namespace
	// whose AuthorizationPolicies apply to the pods of every namespace
	// (their selectors matched against each pod's labels), beside the
	// policies of the pod's own namespace: mesh-wide rules, written
	// where only the mesh's administrators may write (meshd's own
	// namespace by default, as Istio's root namespace is istio-system).
	RootNamespace string

	trustDomain   string
	round         uint64
	namespaces    map[string]*corev1.Namespace
	pods          map[string]*podEntry // by key
	podsByObj     map[*corev1.Pod]*podEntry
	services      map[string]*serviceEntry // by key
	servicesByObj map[*corev1.Service]*serviceEntry
	// slices are the EndpointSlices, with the service each names; groups
	// a service's slices (by key), sorted by name.
	slices   map[*discoveryv1.EndpointSlice]*sliceEntry
	groups   map[string][]*discoveryv1.EndpointSlice
	policies map[*unstructured.Unstructured]*policyEntry
	// troubled are the pods and services with problems (of their own, or
	// found working out their workloads), by key.
	troubled     map[string]*podEntry
	troubledSvcs map[string]*serviceEntry
	// policiesByNs are the last state's policies by namespace, sorted by
	// name.
	policiesByNs map[string][]*policyEntry
	// given is, per workload key, the ports each service (by key) resolves
	// to it.
	given map[string]map[string][]model.Port
	// podOrder and serviceOrder are the entries handed on, sorted by key;
	// nil when they must be sorted again.
	podOrder     []*podEntry
	serviceOrder []*serviceEntry
	// lastPods, lastServices and lastSlices are the lists last converted: a
	// state handing on the same list again (the Watcher, when no event of
	// the kind came) has the same objects.
	lastPods     vec.Vec[*corev1.Pod]
	lastServices vec.Vec[*corev1.Service]
	lastSlices   vec.Vec[*discoveryv1.EndpointSlice]
	// workloads and servicesOut are the lists the last snapshot handed on
	// (converted: there was one); outChanged are the services whose value
	// changed since.
	workloads   []*model.Workload
	servicesOut vec.Vec[*model.Service]
	converted   bool
	outChanged  []*serviceEntry
}

// podEntry is a pod as converted. An entry stays the key's while the pod
// exists; its fields are replaced when the pod changes.
type podEntry struct {
	key   string
	pod   *corev1.Pod
	ns    *corev1.Namespace
	round uint64
	// base is its workload before services' ports, policies and
	// server-first marks (nil: a finished pod); problems are the pod's own.
	base        *model.Workload
	serverFirst string
	problems    problems
	// out is the workload handed on; outProblems and onTCP what working
	// out its ports and policies found.
	out         *model.Workload
	outProblems problems
	onTCP       []onTCP
}

// serviceEntry is a service as converted, with what the conversion read.
type serviceEntry struct {
	key      string
	svc      *corev1.Service
	round    uint64
	out      *model.Service // nil: left out of the mesh
	at       int            // its place in serviceOrder (and servicesOut)
	problems problems
	deps     map[string]podDep
	ports    map[string][]model.Port // by pod key
}

// sliceEntry is an EndpointSlice's service key ("" when it names none),
// and the number of places of the last list holding it.
type sliceEntry struct {
	service string
	places  int
}

// NewConverter returns a Converter for the mesh's trust domain.
func NewConverter(trustDomain string) *Converter {
	return &Converter{trustDomain: trustDomain, pods: map[string]*podEntry{}, podsByObj: map[*corev1.Pod]*podEntry{},
		services: map[string]*serviceEntry{}, servicesByObj: map[*corev1.Service]*serviceEntry{},
		slices: map[*discoveryv1.EndpointSlice]*sliceEntry{}, groups: map[string][]*discoveryv1.EndpointSlice{}, policies: map[*unstructured.Unstructured]*policyEntry{}, troubled: map[string]*podEntry{}, troubledSvcs: map[string]*serviceEntry{},
		given: map[string]map[string][]model.Port{}}
}

// Convert converts st (see Convert), reusing what the states before
// converted. st's lists are immutable (vec): a list of an earlier state,
// or a chunk of one, holds the same objects.
func (c *Converter) Convert(st *State) (*model.Snapshot, []Problem) {
	c.round++
	nsMoved := c.setNamespaces(st.Namespaces)
	policyChanged := c.setPolicies(st.Policies)
	dirty := map[string]bool{} // workloads whose ports or policies are to be worked out again
	depChanged, podsMoved := c.setPods(st.Pods, nsMoved, dirty)
	servicesMoved := c.setServices(st.Services, st.Slices, depChanged, dirty)
	if len(policyChanged) > 0 {
		everywhere := c.RootNamespace != "" && policyChanged[c.RootNamespace]
		for key, e := range c.pods {
			if everywhere || policyChanged[e.pod.Namespace] {
				dirty[key] = true
			}
		}
	}
	workloadsChanged := podsMoved || c.workloads == nil
	for key := range dirty {
		e := c.pods[key]
		var before *model.Workload
		if e != nil {
			before = e.out
		}
		c.finish(e)
		workloadsChanged = workloadsChanged || (e != nil && e.out != before)
	}
	outChanged := c.outChanged
	c.outChanged = c.outChanged[:0]
	if podsMoved || c.podOrder == nil {
		c.podOrder = c.podOrder[:0]
		for _, e := range c.pods {
			if e.base != nil {
				c.podOrder = append(c.podOrder, e)
			}
		}
		slices.SortFunc(c.podOrder, func(a, b *podEntry) int { return cmp.Compare(a.key, b.key) })
	}
	if servicesMoved || c.serviceOrder == nil {
		c.serviceOrder = c.serviceOrder[:0]
		for _, e := range c.services {
			if e.out != nil {
				c.serviceOrder = append(c.serviceOrder, e)
			}
		}
		slices.SortFunc(c.serviceOrder, func(a, b *serviceEntry) int { return cmp.Compare(a.out.Key(), b.out.Key()) })
		for i, e := range c.serviceOrder {
			e.at = i
		}
	}
	// The lists handed on last time again when no entry's value moved:
	// snapshots are never mutated, so they may share them.
	if workloadsChanged {
		c.workloads = make([]*model.Workload, len(c.podOrder))
		for i, e := range c.podOrder {
			c.workloads[i] = e.out
		}
	}
	switch {
	case servicesMoved || !c.converted:
		out := make([]*model.Service, len(c.serviceOrder))
		for i, e := range c.serviceOrder {
			out[i] = e.out
		}
		c.servicesOut, c.converted = vec.Of(out), true
	case len(outChanged) > 0:
		// The same services, some with new values: in their places (the
		// chunks they are in copied, the others shared).
		p := c.servicesOut.Patch()
		for _, e := range outChanged {
			p.Set(e.at, e.out)
		}
		c.servicesOut = p.Vec()
	}
	clear(outChanged) // the array is reused: it holds no entry past this change
	snap := &model.Snapshot{TrustDomain: c.trustDomain, ChangedAt: st.ChangedAt, Workloads: c.workloads, Services: c.servicesOut}
	return snap, c.problems()
}

// setNamespaces records the namespaces and reports whether any was
// added, changed or removed.
func (c *Converter) setNamespaces(list vec.Vec[*corev1.Namespace]) bool {
	nss := make(map[string]*corev1.Namespace, list.Len())
	moved := false
	for ns := range list.Values() {
		nss[ns.Name] = ns
		moved = moved || c.namespaces[ns.Name] != ns
	}
	// Every name maps to its old namespace: one went only if fewer are
	// listed (a name may be listed twice).
	moved = moved || len(nss) != len(c.namespaces)
	c.namespaces = nss
	return moved
}

// setPolicies converts the policies that are new and returns the
// namespaces whose policies changed.
func (c *Converter) setPolicies(list []*unstructured.Unstructured) map[string]bool {
	byNs := map[string][]*policyEntry{}
	for _, u := range list {
		e := c.policies[u]
		if e == nil {
			e = newPolicyEntry(u, c.trustDomain)
			c.policies[u] = e
		}
		e.round = c.round
		byNs[u.GetNamespace()] = append(byNs[u.GetNamespace()], e)
	}
	maps.DeleteFunc(c.policies, func(_ *unstructured.Unstructured, e *policyEntry) bool { return e.round != c.round })
	changed := map[string]bool{}
	for ns, es := range byNs {
		slices.SortFunc(es, func(a, b *policyEntry) int { return cmp.Compare(a.obj.GetName(), b.obj.GetName()) })
		if !slices.Equal(es, c.policiesByNs[ns]) {
			changed[ns] = true
		}
	}
	for ns := range c.policiesByNs {
		if byNs[ns] == nil {
			changed[ns] = true
		}
	}
	c.policiesByNs = byNs
	return changed
}

// setPods converts the pods that are new or changed (or whose namespace
// changed) and marks their workloads dirty. It returns the pods whose
// endpoints read differently now (depChanged), and whether workloads were
// added or removed.
func (c *Converter) setPods(list vec.Vec[*corev1.Pod], nsMoved bool, dirty map[string]bool) (depChanged map[string]bool, moved bool) {
	depChanged = map[string]bool{}
	if !nsMoved && list.Same(c.lastPods) {
		return depChanged, false
	}
	c.lastPods = list
	seen := 0
	for p := range list.Values() {
		if e := c.podsByObj[p]; e != nil && (!nsMoved || e.ns == c.namespaces[p.Namespace]) {
			if e.round != c.round {
				e.round = c.round
				seen++
			}
			continue
		}
		key, ns := p.Name+"."+p.Namespace, c.namespaces[p.Namespace]
		e := c.pods[key]
		if e == nil {
			e = &podEntry{key: key}
			c.pods[key] = e
		} else {
			delete(c.podsByObj, e.pod)
		}
		if e.round != c.round {
			seen++
		}
		before := e.base
		e.pod, e.ns, e.round, e.problems = p, ns, c.round, nil
		e.base, e.serverFirst = workload(p, ns, c.trustDomain, &e.problems)
		c.podsByObj[p] = e
		dirty[key] = true // finish notes its problems
		if depOf(before) != depOf(e.base) {
			depChanged[key] = true
		}
		moved = moved || (before == nil) != (e.base == nil)
	}
	if seen == len(c.pods) {
		return depChanged, moved
	}
	for key, e := range c.pods {
		if e.round == c.round {
			continue
		}
		delete(c.pods, key)
		delete(c.podsByObj, e.pod)
		delete(c.troubled, key)
		depChanged[key] = true
		moved = moved || e.base != nil
	}
	return depChanged, moved
}

// setServices converts the services that are new or changed, or whose
// slices or endpoints' pods changed, and marks dirty the workloads whose
// given ports changed. It returns whether services were added or removed.
func (c *Converter) setServices(list vec.Vec[*corev1.Service], all vec.Vec[*discoveryv1.EndpointSlice], depChanged, dirty map[string]bool) (moved bool) {
	sliced := c.setSlices(all)
	if len(depChanged) == 0 && list.Same(c.lastServices) {
		// The same services: only those whose slices changed.
		for key := range sliced {
			if e := c.services[key]; e != nil {
				moved = c.setService(e.svc, dirty) || moved
			}
		}
		return moved
	}
	c.lastServices = list
	seen := 0
	for s := range list.Values() {
		if e := c.servicesByObj[s]; e != nil && !sliced[e.key] && !readsAny(e.deps, depChanged) {
			if e.round != c.round {
				e.round = c.round
				seen++
			}
			continue
		}
		if e := c.services[s.Name+"."+s.Namespace]; e == nil || e.round != c.round {
			seen++
		}
		moved = c.setService(s, dirty) || moved
	}
	if seen == len(c.services) {
		return moved
	}
	for key, e := range c.services {
		if e.round != c.round {
			c.give(key, e.ports, nil, dirty)
			delete(c.services, key)
			delete(c.servicesByObj, e.svc)
			delete(c.troubledSvcs, key)
			moved = moved || e.out != nil
		}
	}
	return moved
}

// setService converts a service (new, changed, or reading what changed),
// marks dirty the workloads whose given ports changed, and reports whether
// the service entered or left the mesh.
func (c *Converter) setService(s *corev1.Service, dirty map[string]bool) (moved bool) {
	key := s.Name + "." + s.Namespace
	e := c.services[key]
	if e == nil {
		e = &serviceEntry{key: key}
		c.services[key] = e
	} else {
		delete(c.servicesByObj, e.svc)
	}
	conv := serviceConv{pod: func(key string) *model.Workload {
		if e := c.pods[key]; e != nil {
			return e.base
		}
		return nil
	}}
	out := conv.service(s, c.groups[key])
	moved = (e.out == nil) != (out == nil)
	if e.out != nil && out != nil && reflect.DeepEqual(*e.out, *out) {
		out = e.out // the same service: downstream compares pointers first
	}
	if out != e.out {
		c.outChanged = append(c.outChanged, e)
	}
	ports := map[string][]model.Port{}
	for _, pp := range conv.ports {
		ports[pp.key] = append(ports[pp.key], pp.port)
	}
	c.give(key, e.ports, ports, dirty)
	*e = serviceEntry{key: key, svc: s, round: c.round, out: out, at: e.at, problems: conv.problems, deps: conv.deps, ports: ports}
	c.servicesByObj[s] = e
	noteTroubled(c.troubledSvcs, key, e, len(e.problems) > 0)
	return moved
}

// setSlices records the EndpointSlices by the service they name, and
// returns the keys of the services whose slices were added, changed or
// removed. Each slice's entry counts the places of the list holding it
// (a list from a Source may hold one twice), so that a list patched in a
// few places (see kept) costs those places: an object that left one is
// gone when no place holds it any more.
func (c *Converter) setSlices(all vec.Vec[*discoveryv1.EndpointSlice]) map[string]bool {
	changed := map[string]bool{}
	if all.Same(c.lastSlices) {
		return changed
	}
	last := c.lastSlices
	c.lastSlices = all
	place := func(s *discoveryv1.EndpointSlice) {
		e := c.slices[s]
		if e == nil {
			e = c.addSlice(s, changed)
		}
		e.places++
	}
	gone, came, ok := chunkDiff(last, all)
	if !ok { // a new list, or a large change: every place counted again
		for _, e := range c.slices {
			e.places = 0
		}
		for s := range all.Values() {
			place(s)
		}
		for s := range c.slices {
			c.dropSlice(s, changed)
		}
		return changed
	}
	for _, s := range came { // before gone: an object that moved stays
		place(s)
	}
	for _, s := range gone {
		c.slices[s].places--
	}
	for _, s := range gone {
		c.dropSlice(s, changed)
	}
	return changed
}

// dropSlice forgets s if no place holds it any more.
func (c *Converter) dropSlice(s *discoveryv1.EndpointSlice, changed map[string]bool) {
	e := c.slices[s]
	if e == nil || e.places > 0 {
		return
	}
	delete(c.slices, s)
	if e.service != "" {
		c.group(e.service, s, false)
		changed[e.service] = true
	}
}

// addSlice records a slice new to the Converter (at no place yet).
func (c *Converter) addSlice(s *discoveryv1.EndpointSlice, changed map[string]bool) *sliceEntry {
	e := &sliceEntry{}
	if name := s.Labels[discoveryv1.LabelServiceName]; name != "" {
		e.service = name + "." + s.Namespace
		c.group(e.service, s, true)
		changed[e.service] = true
	}
	c.slices[s] = e
	return e
}

// chunkDiff compares two lists of a kind handed on one after the other
// (see kept: an update in its object's place, an addition last, a
// deletion replaced by the last object): gone are the objects at the
// places where last differs from next (a longer last's tail included),
// came next's there (a longer next's tail included). The chunks next
// shares with last (see vec) are not gone over. ok is false when more
// than a quarter of the places differ (a list in a new order, a large
// change): a pass over the list then costs as little.
func chunkDiff[T comparable](last, next vec.Vec[T]) (gone, came []T, ok bool) {
	n, longest := min(last.Len(), next.Len()), max(last.Len(), next.Len())
	limit, changes := longest/4+1, longest-n
	if changes > limit {
		return nil, nil, false
	}
	for b := range (n + vec.ChunkLen - 1) / vec.ChunkLen {
		if last.SameChunk(next, b) {
			continue
		}
		for i := b * vec.ChunkLen; i < min((b+1)*vec.ChunkLen, n); i++ {
			if x, y := last.At(i), next.At(i); x != y {
				if changes++; changes > limit {
					return nil, nil, false
				}
				gone, came = append(gone, x), append(came, y)
			}
		}
	}
	for i := n; i < last.Len(); i++ {
		gone = append(gone, last.At(i))
	}
	for i := n; i < next.Len(); i++ {
		came = append(came, next.At(i))
	}
	return gone, came, true
}

// group adds s to (or removes it from) its service's slices, kept sorted
// by name. The slices are new each time: a service's conversion read the
// old ones.
func (c *Converter) group(service string, s *discoveryv1.EndpointSlice, add bool) {
	old := c.groups[service]
	var next []*discoveryv1.EndpointSlice
	if add {
		i, _ := slices.BinarySearchFunc(old, s, compareSlices)
		next = slices.Insert(slices.Clone(old), i, s)
	} else {
		next = slices.DeleteFunc(slices.Clone(old), func(a *discoveryv1.EndpointSlice) bool { return a == s })
	}
	if len(next) == 0 {
		delete(c.groups, service)
		return
	}
	c.groups[service] = next
}

// compareSlices orders a service's slices by name, and two of one name
// (a local directory may define one twice) by content, so that which of
// them a service reads first does not depend on the order they came in.
func compareSlices(a, b *discoveryv1.EndpointSlice) int {
	if c := cmp.Compare(a.Name, b.Name); c != 0 || a == b {
		return c
	}
	return cmp.Compare(a.String(), b.String())
}

// readsAny reports whether deps names a pod in changed.
func readsAny(deps map[string]podDep, changed map[string]bool) bool {
	if len(changed) == 0 || len(deps) == 0 {
		return false
	}
	if len(changed) < len(deps) {
		for key := range changed {
			if _, ok := deps[key]; ok {
				return true
			}
		}
		return false
	}
	for key := range deps {
		if changed[key] {
			return true
		}
	}
	return false
}

// give records the ports service svc now resolves to each pod (was: what
// it resolved before), marking dirty the workloads whose ports moved.
func (c *Converter) give(svc string, was, now map[string][]model.Port, dirty map[string]bool) {
	for key, ports := range was {
		if _, ok := now[key]; !ok {
			delete(c.given[key], svc)
			if len(c.given[key]) == 0 {
				delete(c.given, key)
			}
			dirty[key] = true
		} else if !slices.Equal(ports, now[key]) {
			dirty[key] = true
		}
	}
	for key, ports := range now {
		if _, ok := was[key]; !ok {
			dirty[key] = true
		}
		if c.given[key] == nil {
			c.given[key] = map[string][]model.Port{}
		}
		c.given[key][svc] = ports
	}
}

// finish works out the workload of e handed on: its ports (its own and
// those services resolve to it, in service key order), server-first marks
// and policies. The workload handed on before is kept when it is the same.
func (c *Converter) finish(e *podEntry) {
	if e == nil {
		return
	}
	e.outProblems, e.onTCP = nil, nil
	defer func() { noteTroubled(c.troubled, e.key, e, len(e.problems)+len(e.outProblems)+len(e.onTCP) > 0) }()
	if e.base == nil {
		e.out = nil
		return
	}
	w := *e.base
	ports := slices.Clone(w.Ports)
	given := c.given[e.key]
	for _, svc := range slices.Sorted(maps.Keys(given)) {
		ports = append(ports, given[svc]...)
	}
	w.Ports = slices.DeleteFunc(uniquePorts(ports), func(p model.Port) bool { return w.Bypasses(p.Port) })
	serverFirst(&w, e.serverFirst, &e.outProblems)
	own := c.policiesByNs[w.Namespace]
	if c.RootNamespace != "" && w.Namespace != c.RootNamespace {
		own = slices.Concat(own, c.policiesByNs[c.RootNamespace])
	}
	w.Policies = selecting(own, e.pod)
	if e.out == nil || !reflect.DeepEqual(*e.out, w) {
		e.out = &w
	}
	e.onTCP = httpRulesOnTCP(e.out)
}

// noteTroubled records whether the entry of key has problems.
func noteTroubled[E any](m map[string]*E, key string, e *E, has bool) {
	if has {
		m[key] = e
	} else {
		delete(m, key)
	}
}

// problems are the problems of every object, sorted, each once (a
// namespace's is found by each of its pods).
func (c *Converter) problems() []Problem {
	var out []Problem
	uids := map[string]string{}
	for u, e := range c.policies {
		// Of two policies of one name (a Source listing both), the same
		// one every time: the map is walked in no order.
		key, uid := u.GetNamespace()+"/"+u.GetName(), string(u.GetUID())
		if had, ok := uids[key]; !ok || uid < had {
			uids[key] = uid
		}
		if e.problem != nil {
			out = append(out, *e.problem)
		}
	}
	var onTCPs []*podEntry
	for _, e := range c.troubled {
		out = append(out, e.problems...)
		out = append(out, e.outProblems...)
		if len(e.onTCP) > 0 {
			onTCPs = append(onTCPs, e)
		}
	}
	type policyPort struct {
		policy string
		port   uint32
	}
	reported := map[policyPort]bool{}
	slices.SortFunc(onTCPs, func(a, b *podEntry) int { return cmp.Compare(a.key, b.key) })
	for _, e := range onTCPs { // in key order: the first workload names it
		for _, t := range e.onTCP {
			// By key: workloads not worked out again keep the policy value
			// they were given, and a policy rewritten with the same spec
			// (its status written) is a new value.
			if k := (policyPort{t.policy.Key(), t.port}); !reported[k] {
				reported[k] = true
				out = append(out, t.problem(uids[t.policy.Key()]))
			}
		}
	}
	for _, e := range c.troubledSvcs {
		out = append(out, e.problems...)
	}
	// By UID too: two objects of one name (a Source listing both) are in
	// the same order every time.
	slices.SortFunc(out, func(a, b Problem) int { return cmp.Or(cmp.Compare(a.String(), b.String()), cmp.Compare(a.UID, b.UID)) })
	return slices.Compact(out)
}

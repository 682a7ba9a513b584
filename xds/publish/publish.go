// Package publish composes each proxy's configuration and sets it in the
// cache the ADS server answers from: the resources every proxy (or every
// proxy of an egress scope) shares, prepared once per change, merged with
// the proxy's own (inbound listeners, secrets), set only once complete and
// consistent. It also measures convergence: from a Kubernetes change being
// noticed to each proxy ACKing every type the change moved.
//
// Where it sits: after the translation (the Mesh in package xds hands it
// each model's resources) and before xds/cache, which it reaches only
// through Cache (set or clear a node's snapshot); sets and snapshots are
// xds/resource's. It must not import xds or xds/cache, nor read
// Kubernetes.
package publish

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/meshd/meshd/xds/resource"
)

// Cache is where the Publisher sets each node's snapshot: xds/cache's
// Cache, or any go-control-plane snapshot cache. The snapshots set are
// *resource.Snapshot.
type Cache interface {
	SetSnapshot(ctx context.Context, node string, snap cachev3.ResourceSnapshot) error
	ClearSnapshot(node string)
}

// Publisher composes each proxy's snapshot from the resources every proxy
// shares (clusters, endpoints, routes: hashed once per change) and the
// proxy's own (inbound listeners, secrets), and sets it in the cache only when
// it is complete and consistent. A proxy's snapshot is published only once
// its secrets are there, so nothing that references a secret goes out before
// the secret (Envoy SDS warming stalls). Safe for concurrent use.
type Publisher struct {
	cache Cache

	mu      sync.Mutex
	started bool // SetAll has been called: the mesh config is known
	shared  map[resourcev3.Type]resource.Set
	proxies map[string]map[resourcev3.Type]resource.Set
	// scopes are the shared resources of each egress scope (by key), what
	// scoped proxies get instead of shared; scopeOf is each scoped proxy's.
	scopes  map[string]map[resourcev3.Type]resource.Set
	scopeOf map[string]string
	// members are the proxies of each scope by key ("": unscoped; scopeOf
	// inverted), so that a change of one scope goes over its proxies, not
	// over every proxy.
	members map[string]map[string]struct{}
	// failed are the proxies whose last publish failed: tried again by
	// every SetScoped whatever moved.
	failed map[string]struct{}
	// refs are the shared sets of the mesh ("") and of each scope by their
	// place in ADS order, as every snapshot composed from them refers to
	// them (see refsLocked); dropped when the sets are replaced.
	refs map[string]*[resource.NumTypes]*resource.Set
	// published is each proxy's last snapshot; checks counts the proxy
	// snapshots checked for completeness and composed counts the proxies
	// composed again (what tests read).
	published map[string]published
	checks    int
	composed  int
	// gens numbers the shared resources ("") and each scope's (by key):
	// a new number whenever a version in them moves. A proxy whose own
	// resources did not move and whose shared ones have the number its
	// last snapshot was composed from is not composed again.
	gens map[string]uint64
	gen  uint64

	// enc keeps the encodings of the last shared and scope resources,
	// ownEnc the versions of the proxies' own resources of the last
	// publish (both guarded by encMu, taken before mu).
	encMu  sync.Mutex
	enc    resource.Encoder
	ownEnc resource.OwnEncoder

	// Convergence: from a Kubernetes change being noticed to a proxy
	// ACKing every type that change moved.
	changedAt   time.Time // of the model being published by SetAll
	conv        map[string]*convergence
	convergence prometheus.Histogram
	clock       clock.PassiveClock
}

// published is a proxy's last snapshot and, by type (in resource.Types'
// order), the versions of the shared and own sets each of its sets was
// merged from, and the shared set's size: the next snapshot reuses a set
// whose parts did not move instead of merging them again, and is not
// checked for completeness again when the proxy's own sets are the same
// and the shared ones have the same names (an endpoint change).
type published struct {
	snap      *resource.Snapshot
	from      [resource.NumTypes][2]string
	sharedLen [resource.NumTypes]int
	// scope and gen are the shared resources it was composed from: the
	// scope's key ("" for the mesh's) and their number (see gens).
	scope string
	gen   uint64
}

// New returns a Publisher that publishes into cache.
func New(cache Cache) *Publisher {
	return &Publisher{cache: cache, shared: map[resourcev3.Type]resource.Set{}, proxies: map[string]map[resourcev3.Type]resource.Set{},
		scopes: map[string]map[resourcev3.Type]resource.Set{}, scopeOf: map[string]string{}, members: map[string]map[string]struct{}{}, failed: map[string]struct{}{}, refs: map[string]*[resource.NumTypes]*resource.Set{}, published: map[string]published{}, gens: map[string]uint64{},
		conv: map[string]*convergence{}, clock: clock.RealClock{}, convergence: newConvergenceHistogram()}
}

// SetAll replaces the shared resources and, for the proxies in own, the
// types given there, then publishes every proxy once. This is how a model
// change goes out: shared and per-proxy resources of the same model
// together, never a mix of two models. changedAt, if set, is when the
// change was noticed; proxies' convergence is measured from it. Nothing is
// published before the first SetAll: a proxy that connects before the mesh
// config is known (informers not yet synced after a restart) keeps what it
// has instead of getting an empty config. The caller must not mutate shared
// or own afterwards.
func (p *Publisher) SetAll(ctx context.Context, changedAt time.Time, shared resource.Resources, own map[string]resource.Resources) error {
	return p.SetScoped(ctx, changedAt, resource.ListsOf(shared), nil, own, nil)
}

// SetScoped is SetAll with egress scopes: scopes holds, by scope key, the
// resources proxies of that scope share instead of shared, and scopeOf the
// scope of each proxy it names ("": none; a proxy not named keeps its
// scope). Scopes not given are forgotten.
func (p *Publisher) SetScoped(ctx context.Context, changedAt time.Time, shared resource.Lists, scopes map[string]resource.Lists, own map[string]resource.Resources, scopeOf map[string]string) error {
	p.encMu.Lock()
	defer p.encMu.Unlock()
	// The sets these replace: only SetScoped (holding encMu) replaces
	// p.shared, but SetProxyScope adds scopes under mu alone.
	p.mu.Lock()
	prevShared, prevScopes := p.shared, maps.Clone(p.scopes)
	p.mu.Unlock()
	round := p.enc.Begin()
	hashed, err := prepareShared(shared, round, prevShared)
	if err != nil {
		return err
	}
	hashedScopes := make(map[string]map[resourcev3.Type]resource.Set, len(scopes))
	unchanged := map[string]bool{} // scopes whose sets stand as they were
	for key, res := range scopes {
		if round.Unchanged(res, prevScopes[key]) {
			// Nothing of the scope moved (a change of other services): a
			// change costs the scopes it moved, not every scope.
			hashedScopes[key], unchanged[key] = prevScopes[key], true
			continue
		}
		if hashedScopes[key], err = prepareShared(res, round, prevScopes[key]); err != nil {
			return fmt.Errorf("scope %s: %w", key, err)
		}
	}
	round.End()
	ownHashed := make(map[string]map[resourcev3.Type]resource.Set, len(own))
	ownRound := p.ownEnc.Begin()
	for node, res := range own {
		if ownHashed[node], err = ownRound.Own(res); err != nil {
			return err
		}
	}
	ownRound.End()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		since(p.shared, hashed)
		for key, h := range hashedScopes {
			if !unchanged[key] {
				since(p.scopes[key], h)
			}
		}
	}
	meshMoved := p.renumberLocked("", p.shared, hashed)
	var moved []string // the scopes whose proxies are composed anew
	for key := range p.gens {
		if _, kept := hashedScopes[key]; key != "" && !kept {
			delete(p.gens, key)
			moved = append(moved, key) // its proxies fall back to the mesh's
		}
	}
	for key, h := range hashedScopes {
		// no proxy is of scope "": it is the mesh's number
		if key != "" && !unchanged[key] && p.renumberLocked(key, p.scopes[key], h) {
			moved = append(moved, key)
		}
	}
	p.shared, p.scopes, p.started, p.changedAt = hashed, hashedScopes, true, changedAt
	clear(p.refs)
	defer func() { p.changedAt = time.Time{} }()
	for node, h := range ownHashed {
		p.setOwnLocked(node, h)
	}
	for node, key := range scopeOf {
		p.setScopeLocked(node, key)
	}
	if meshMoved {
		// The proxies composed from the mesh's resources: the unscoped,
		// and those of a scope not known.
		moved = append(moved, "")
		for key := range p.members {
			if _, known := p.scopes[key]; key != "" && !known {
				moved = append(moved, key)
			}
		}
	}
	// Only the proxies of what moved may be composed anew: those whose own
	// resources or scope moved, those whose last publish failed, and those
	// of the scopes that moved (the mesh's included). A change of one
	// scope's services goes over that scope's proxies, not over every proxy.
	var errs []error
	done := map[string]struct{}{} // composed by the first three loops
	publish := func(node string) {
		done[node] = struct{}{}
		if err := p.publishLocked(ctx, node); err != nil {
			errs = append(errs, err)
		}
	}
	failed := maps.Clone(p.failed)
	for node := range ownHashed {
		publish(node)
	}
	for node := range failed {
		if _, ok := done[node]; !ok {
			publish(node)
		}
	}
	for node := range scopeOf {
		if _, ok := done[node]; !ok && !p.composedLocked(node) {
			publish(node)
		}
	}
	for _, key := range moved {
		for node := range p.members[key] { // a proxy is of one scope: met once
			if _, ok := done[node]; ok || p.composedLocked(node) {
				continue // nothing it is composed of moved (a change outside its scope)
			}
			if err := p.publishLocked(ctx, node); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("xds: publish: %w", errors.Join(errs...))
	}
	return nil
}

// renumberLocked gives the shared resources of a scope ("": the mesh's) a
// new number when next moves a version of prev.
func (p *Publisher) renumberLocked(key string, prev, next map[resourcev3.Type]resource.Set) bool {
	_, numbered := p.gens[key]
	if numbered && len(prev) == len(next) && sameVersions(prev, next) {
		return false
	}
	p.gen++
	p.gens[key] = p.gen
	return true
}

// sameVersions reports whether next has every type of prev at its version.
func sameVersions(prev, next map[resourcev3.Type]resource.Set) bool {
	for t, v := range prev {
		if n, ok := next[t]; !ok || n.Version() != v.Version() {
			return false
		}
	}
	return true
}

// sharedKeyLocked is the key of the shared resources a proxy is composed
// from: its scope's, or "" for the mesh's (unscoped, or its scope not
// known).
func (p *Publisher) sharedKeyLocked(nodeID string) string {
	if key, ok := p.scopeOf[nodeID]; ok {
		if _, ok := p.scopes[key]; ok {
			return key
		}
	}
	return ""
}

// composedLocked reports whether a proxy's last snapshot was composed from
// the shared resources it has now (its own resources did not move).
func (p *Publisher) composedLocked(nodeID string) bool {
	pub, ok := p.published[nodeID]
	key := p.sharedKeyLocked(nodeID)
	return ok && pub.snap != nil && pub.scope == key && pub.gen == p.gens[key]
}

// sharedPreparer prepares shared sets: a resource.Round (a model change)
// or the resource.Encoder between rounds.
type sharedPreparer interface {
	Shared(res resource.Lists, prev map[resourcev3.Type]resource.Set) (map[resourcev3.Type]resource.Set, error)
}

// prepareShared prepares resources every proxy (of a scope) shares; prev
// are the sets they replace (nil: none).
func prepareShared(res resource.Lists, enc sharedPreparer, prev map[resourcev3.Type]resource.Set) (map[resourcev3.Type]resource.Set, error) {
	hashed, err := enc.Shared(res, prev)
	if err != nil {
		return nil, err
	}
	if sameShape(hashed, prev) {
		return hashed, nil // as complete as prev, checked when it was prepared
	}
	if err := selfComplete(hashed); err != nil {
		return nil, fmt.Errorf("xds: shared resources are inconsistent: %w", err)
	}
	return hashed, nil
}

// since records in each new set what changed from the old one of its type.
func since(old, hashed map[resourcev3.Type]resource.Set) {
	for t, v := range hashed {
		if o, ok := old[t]; ok {
			hashed[t] = v.Since(o)
		}
	}
}

func (p *Publisher) setScopeLocked(node, key string) {
	_, known := p.proxies[node]
	if known {
		p.leaveLocked(node)
	}
	if key == "" {
		delete(p.scopeOf, node)
	} else {
		p.scopeOf[node] = key
	}
	if known {
		p.joinLocked(node)
	}
}

// joinLocked counts a proxy in its scope's members (scopeOf's).
func (p *Publisher) joinLocked(node string) {
	key := p.scopeOf[node]
	if p.members[key] == nil {
		p.members[key] = map[string]struct{}{}
	}
	p.members[key][node] = struct{}{}
}

// leaveLocked uncounts a proxy from its scope's members.
func (p *Publisher) leaveLocked(node string) {
	key := p.scopeOf[node]
	if delete(p.members[key], node); len(p.members[key]) == 0 {
		delete(p.members, key)
	}
}

// SetProxyScope sets a scoped proxy's scope (its resources, if the scope is
// not known yet) and own resources, and republishes it: a proxy that
// connects with a scope no other connected proxy has.
func (p *Publisher) SetProxyScope(ctx context.Context, nodeID, key string, scope resource.Lists, own resource.Resources) error {
	var hashedScope map[resourcev3.Type]resource.Set
	if key != "" && scope != nil {
		var err error
		p.encMu.Lock()
		hashedScope, err = prepareShared(scope, &p.enc, nil)
		p.encMu.Unlock()
		if err != nil {
			return fmt.Errorf("scope %s: %w", key, err)
		}
	}
	hashed, err := resource.Own(own)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, known := p.scopes[key]; key != "" && !known && hashedScope != nil {
		p.scopes[key] = hashedScope
		delete(p.refs, key)
		p.renumberLocked(key, nil, hashedScope)
	}
	p.setOwnLocked(nodeID, hashed)
	p.setScopeLocked(nodeID, key)
	return p.publishLocked(ctx, nodeID)
}

// HasScope reports whether a scope's resources are known.
func (p *Publisher) HasScope(key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.scopes[key]
	return ok
}

// refsLocked is sharedLocked(key) by place in ADS order, a set for every
// type (empty where key has none), made once for every snapshot composed
// from them to refer to.
func (p *Publisher) refsLocked(key string) *[resource.NumTypes]*resource.Set {
	if refs := p.refs[key]; refs != nil {
		return refs
	}
	shared, refs := p.sharedLocked(key), new([resource.NumTypes]*resource.Set)
	for i, t := range resource.Types() {
		v := shared[t]
		refs[i] = &v
	}
	p.refs[key] = refs
	return refs
}

// sharedLocked is the shared resources of key (sharedKeyLocked's): a
// scope's, or the mesh's for "".
func (p *Publisher) sharedLocked(key string) map[resourcev3.Type]resource.Set {
	if key != "" {
		return p.scopes[key]
	}
	return p.shared
}

func (p *Publisher) setOwnLocked(nodeID string, hashed map[resourcev3.Type]resource.Set) {
	own := p.proxies[nodeID]
	if own == nil {
		own = map[resourcev3.Type]resource.Set{}
		p.proxies[nodeID] = own
		p.joinLocked(nodeID)
	}
	for t, v := range hashed {
		own[t] = v
	}
}

// SetProxy replaces one proxy's own resources (its secrets and inbound
// listeners) and republishes it. Types not in res keep their resources.
func (p *Publisher) SetProxy(ctx context.Context, nodeID string, res resource.Resources) error {
	hashed, err := resource.Own(res)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setOwnLocked(nodeID, hashed)
	return p.publishLocked(ctx, nodeID)
}

// RemoveProxy forgets a proxy and clears its snapshot.
func (p *Publisher) RemoveProxy(nodeID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, known := p.proxies[nodeID]; known {
		p.leaveLocked(nodeID)
	}
	delete(p.scopeOf, nodeID)
	delete(p.proxies, nodeID)
	delete(p.published, nodeID)
	delete(p.failed, nodeID)
	delete(p.conv, nodeID)
	p.cache.ClearSnapshot(nodeID)
}

// publishLocked merges shared and own resources and sets the snapshot once
// the proxy has its secrets. A type the proxy has nothing of its own in
// reuses the shared set as prepared; only merged types cost per proxy.
func (p *Publisher) publishLocked(ctx context.Context, nodeID string) error {
	if err := p.composeLocked(ctx, nodeID); err != nil {
		p.failed[nodeID] = struct{}{}
		return err
	}
	delete(p.failed, nodeID)
	return nil
}

// composeLocked is publishLocked but for recording a failure.
func (p *Publisher) composeLocked(ctx context.Context, nodeID string) error {
	own := p.proxies[nodeID]
	if !p.started || own[resourcev3.SecretType].Len() == 0 {
		return nil // not before the mesh config and the secrets
	}
	p.composed++
	key := p.sharedKeyLocked(nodeID)
	shared := p.refsLocked(key)
	prev, same := p.published[nodeID], true
	// What completeness reads (the own sets' references, the names of both)
	// is what it read for the last snapshot, which was complete.
	checked := prev.snap != nil
	next := published{scope: key, gen: p.gens[key]}
	var sets [resource.NumTypes]*resource.Set
	for i, t := range resource.Types() {
		parts := [2]string{shared[i].Version(), own[t].Version()}
		checked = checked && parts[1] == prev.from[i][1] && shared[i].SameNamesAs(prev.from[i][0], prev.sharedLen[i])
		next.from[i], next.sharedLen[i] = parts, shared[i].Len()
		v := prev.reuse(i, parts)
		if v == nil {
			// Merging a type the proxy has resources of its own in costs a
			// map entry per resource: not again for a type nothing moved in
			// (a proxy's inbound route beside 1,000 shared routes, on every
			// endpoint change). A type it has none of refers to the shared
			// set itself.
			v, same = resource.MergeRef(shared[i], own[t]), false
		}
		sets[i] = v
	}
	if same {
		// Nothing moved for this proxy (a change outside its scope): the
		// snapshot stands, composed from what it has now.
		prev.scope, prev.gen = key, next.gen
		p.published[nodeID] = prev
		return nil
	}
	if !checked {
		p.checks++
		if err := complete(p.sharedLocked(key), own); err != nil {
			return fmt.Errorf("xds: snapshot for %s is inconsistent: %w", nodeID, err)
		}
	}
	next.snap = resource.SnapshotOf(sets)
	if err := p.cache.SetSnapshot(ctx, nodeID, next.snap); err != nil {
		return err
	}
	p.published[nodeID] = next
	p.trackLocked(nodeID, next.snap)
	return nil
}

// reuse returns the published snapshot's set of the type at place i (nil:
// none) if it was merged from parts.
func (pub published) reuse(i int, parts [2]string) *resource.Set {
	if pub.snap == nil || pub.from[i] != parts {
		return nil
	}
	return pub.snap.RefAt(i)
}

// complete checks that every route and endpoint set the proxy's own
// resources name is in its snapshot (the shared set was checked alone by
// SetAll). Unlike go-control-plane's Consistent it allows resources nobody
// references (routes of proxyless gRPC API listeners, shared routes a
// proxy's listeners do not use).
func complete(shared, own map[resourcev3.Type]resource.Set) error {
	for _, v := range own {
		for t, names := range v.Refs() {
			sharedIx, ownIx := shared[t].Index(), own[t].Index()
			for name := range names {
				if sharedIx.Has(name) {
					continue
				}
				if !ownIx.Has(name) {
					return fmt.Errorf("%s %q is referenced but missing", resource.ShortType(t), name)
				}
			}
		}
	}
	return nil
}

// sameShape reports whether sets have the names of prev's and the same
// references (a set that references nothing may change its resources):
// what an endpoint change makes. Checking their completeness would go over
// every reference again and find what it found for prev.
func sameShape(sets, prev map[resourcev3.Type]resource.Set) bool {
	if prev == nil || len(sets) != len(prev) {
		return false
	}
	for t, v := range sets {
		p, ok := prev[t]
		if !ok || !v.SameNames(p) || (len(v.Refs())+len(p.Refs()) > 0 && v.Version() != p.Version()) {
			return false
		}
	}
	return true
}

// selfComplete checks that a set of resources has every route and endpoint
// set it references.
func selfComplete(set map[resourcev3.Type]resource.Set) error {
	for _, v := range set {
		for t, names := range v.Refs() {
			ix := set[t].Index()
			for name := range names {
				if !ix.Has(name) {
					return fmt.Errorf("%s %q is referenced but missing", resource.ShortType(t), name)
				}
			}
		}
	}
	return nil
}

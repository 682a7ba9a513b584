package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"k8s.io/utils/clock"
)

// Resources are xDS resources by type URL.
type Resources map[resourcev3.Type][]types.Resource

// versioned is one type's resources, prepared once when the set is built
// and then shared by every proxy that gets it unchanged: the content-hash
// version, the go-control-plane resource index, the per-resource versions
// delta xDS compares, and the names the set references (routes, endpoint
// sets). Nothing in it is mutated after hashAll.
type versioned struct {
	version    string
	items      []types.Resource
	resources  cachev3.Resources
	versionMap map[string]string
	refs       map[resourcev3.Type]map[string]bool
	// raw holds each resource's deterministic encoding, by name (shared
	// sets only): delta responses to every stream reuse it.
	raw map[string][]byte
	// plain is the resources by name, built once: go-control-plane's
	// Snapshot.GetResources would build it again for every proxy and type
	// on every change.
	plain map[string]types.Resource
	// from, changed, removed: the set this one replaced (shared sets only;
	// from is "" when there was none), and the names added or changed and
	// the names gone since. A stream holding exactly that set needs only
	// these (see Cache).
	from             string
	changed, removed []string
	// enc: the resources as Any values, made when a SotW response first
	// needs them; reuse: the shared set a proxy's merged set extends.
	enc   *encodings
	reuse *versioned
}

// snapshot is a go-control-plane Snapshot whose GetResources returns the
// prepared name index of each set instead of building one per call; sets
// are also what Cache answers delta streams from.
type snapshot struct {
	*cachev3.Snapshot
	sets map[resourcev3.Type]versioned
	// from is, by type, the versions of the shared and own sets each set
	// was merged from: the next snapshot reuses a set whose parts did not
	// move instead of merging them again.
	from map[resourcev3.Type][2]string
}

func (s *snapshot) GetResources(typeURL resourcev3.Type) map[string]types.Resource {
	if v, ok := s.sets[typeURL]; ok {
		return v.plain
	}
	return s.Snapshot.GetResources(typeURL)
}

// newVersioned prepares a set: the go-control-plane index and the plain one.
func newVersioned(version string, items []types.Resource, versionMap map[string]string) versioned {
	res := cachev3.NewResources(version, items)
	plain := make(map[string]types.Resource, len(res.Items))
	for name, r := range res.Items {
		plain[name] = r.Resource
	}
	return versioned{version: version, items: items, resources: res, versionMap: versionMap, plain: plain, enc: &encodings{}}
}

// Publisher composes each proxy's snapshot from the resources every proxy
// shares (clusters, endpoints, routes: hashed once per change) and the
// proxy's own (inbound listeners, secrets), and sets it in the cache only when
// it is complete and consistent. A proxy's snapshot is published only once
// its secrets are there, so nothing that references a secret goes out before
// the secret (Envoy SDS warming stalls). Safe for concurrent use.
type Publisher struct {
	cache cachev3.SnapshotCache

	mu      sync.Mutex
	started bool // SetAll has been called: the mesh config is known
	shared  map[resourcev3.Type]versioned
	proxies map[string]map[resourcev3.Type]versioned
	// scopes are the shared resources of each egress scope (by key), what
	// scoped proxies get instead of shared; scopeOf is each scoped proxy's.
	scopes  map[string]map[resourcev3.Type]versioned
	scopeOf map[string]string
	// published is each proxy's last snapshot.
	published map[string]*snapshot

	// enc: the encodings of the last shared and scope resources (guarded
	// by encMu, taken before mu).
	encMu sync.Mutex
	enc   map[types.Resource]encoded

	// Convergence: from a Kubernetes change being noticed to a proxy
	// ACKing every type that change moved.
	changedAt   time.Time // of the model being published by SetAll
	conv        map[string]*convergence
	convergence prometheus.Histogram
	clock       clock.PassiveClock
}

type convergence struct {
	published map[resourcev3.Type]string // versions in the proxy's snapshot
	pending   map[resourcev3.Type]string // moved by a model change, not yet ACKed
	changedAt time.Time                  // the earliest change still pending
}

// NewPublisher publishes into cache.
func NewPublisher(cache cachev3.SnapshotCache) *Publisher {
	return &Publisher{cache: cache, shared: map[resourcev3.Type]versioned{}, proxies: map[string]map[resourcev3.Type]versioned{},
		scopes: map[string]map[resourcev3.Type]versioned{}, scopeOf: map[string]string{}, published: map[string]*snapshot{},
		conv: map[string]*convergence{}, clock: clock.RealClock{},
		convergence: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meshd_xds_convergence_seconds",
			Help:    "Time from a Kubernetes change being noticed to a proxy ACKing every resource type it moved.",
			Buckets: latencyBuckets})}
}

// RegisterMetrics registers the publisher's collectors.
func (p *Publisher) RegisterMetrics(reg prometheus.Registerer) error {
	return reg.Register(p.convergence)
}

// OnACK records that a proxy holds a version of a type; when it holds every
// type a model change moved, its convergence time is observed.
func (p *Publisher) OnACK(nodeID, typeURL, version string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.conv[nodeID]
	if c == nil || c.pending[typeURL] != version {
		return
	}
	delete(c.pending, typeURL)
	if len(c.pending) == 0 && !c.changedAt.IsZero() {
		p.convergence.Observe(p.clock.Since(c.changedAt).Seconds())
		c.changedAt = time.Time{}
	}
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
func (p *Publisher) SetAll(ctx context.Context, changedAt time.Time, shared Resources, own map[string]Resources) error {
	return p.SetScoped(ctx, changedAt, shared, nil, own, nil)
}

// SetScoped is SetAll with egress scopes: scopes holds, by scope key, the
// resources proxies of that scope share instead of shared, and scopeOf the
// scope of each proxy it names ("": none; a proxy not named keeps its
// scope). Scopes not given are forgotten.
func (p *Publisher) SetScoped(ctx context.Context, changedAt time.Time, shared Resources, scopes map[string]Resources, own map[string]Resources, scopeOf map[string]string) error {
	p.encMu.Lock()
	defer p.encMu.Unlock()
	enc := &encodingCache{prev: p.enc, next: map[types.Resource]encoded{}}
	hashed, err := hashShared(shared, enc)
	if err != nil {
		return err
	}
	hashedScopes := make(map[string]map[resourcev3.Type]versioned, len(scopes))
	for key, res := range scopes {
		if hashedScopes[key], err = hashShared(res, enc); err != nil {
			return fmt.Errorf("scope %s: %w", key, err)
		}
	}
	p.enc = enc.next
	ownHashed := make(map[string]map[resourcev3.Type]versioned, len(own))
	for node, res := range own {
		if ownHashed[node], err = hashAll(res, false); err != nil {
			return err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		since(p.shared, hashed)
		for key, h := range hashedScopes {
			since(p.scopes[key], h)
		}
	}
	p.shared, p.scopes, p.started, p.changedAt = hashed, hashedScopes, true, changedAt
	defer func() { p.changedAt = time.Time{} }()
	for node, h := range ownHashed {
		p.setOwnLocked(node, h)
	}
	for node, key := range scopeOf {
		p.setScopeLocked(node, key)
	}
	var errs []error
	for node := range p.proxies {
		if err := p.publishLocked(ctx, node); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("xds: publish: %w", errors.Join(errs...))
	}
	return nil
}

// hashShared prepares resources every proxy (of a scope) shares.
func hashShared(res Resources, c *encodingCache) (map[resourcev3.Type]versioned, error) {
	hashed, err := hashWith(res, true, c)
	if err != nil {
		return nil, err
	}
	if err := selfComplete(hashed); err != nil {
		return nil, fmt.Errorf("xds: shared resources are inconsistent: %w", err)
	}
	return hashed, nil
}

// since records in each new set what changed from the old one of its type.
func since(old, hashed map[resourcev3.Type]versioned) {
	for t, v := range hashed {
		if o, ok := old[t]; ok {
			setDifference(o, &v)
			hashed[t] = v
		}
	}
}

func (p *Publisher) setScopeLocked(node, key string) {
	if key == "" {
		delete(p.scopeOf, node)
	} else {
		p.scopeOf[node] = key
	}
}

// SetProxyScope sets a scoped proxy's scope (its resources, if the scope is
// not known yet) and own resources, and republishes it: a proxy that
// connects with a scope no other connected proxy has.
func (p *Publisher) SetProxyScope(ctx context.Context, nodeID, key string, scope Resources, own Resources) error {
	var hashedScope map[resourcev3.Type]versioned
	if key != "" && scope != nil {
		var err error
		p.encMu.Lock()
		hashedScope, err = hashShared(scope, &encodingCache{prev: p.enc})
		p.encMu.Unlock()
		if err != nil {
			return fmt.Errorf("scope %s: %w", key, err)
		}
	}
	hashed, err := hashAll(own, false)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, known := p.scopes[key]; key != "" && !known && hashedScope != nil {
		p.scopes[key] = hashedScope
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

// sharedOfLocked is what the proxy shares: its scope's resources, or the
// mesh's.
func (p *Publisher) sharedOfLocked(nodeID string) map[resourcev3.Type]versioned {
	if key, ok := p.scopeOf[nodeID]; ok {
		if sc, ok := p.scopes[key]; ok {
			return sc
		}
	}
	return p.shared
}

func (p *Publisher) setOwnLocked(nodeID string, hashed map[resourcev3.Type]versioned) {
	own := p.proxies[nodeID]
	if own == nil {
		own = map[resourcev3.Type]versioned{}
		p.proxies[nodeID] = own
	}
	for t, v := range hashed {
		own[t] = v
	}
}

// SetProxy replaces one proxy's own resources (its secrets and inbound
// listeners) and republishes it. Types not in res keep their resources.
func (p *Publisher) SetProxy(ctx context.Context, nodeID string, res Resources) error {
	hashed, err := hashAll(res, false)
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
	delete(p.proxies, nodeID)
	delete(p.scopeOf, nodeID)
	delete(p.published, nodeID)
	delete(p.conv, nodeID)
	p.cache.ClearSnapshot(nodeID)
}

// snapshotTypes are the types every snapshot holds.
var snapshotTypes = []resourcev3.Type{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType, resourcev3.SecretType}

// emptySet is the prepared form of a type with no resources. It still has a
// version: a SotW client asking with version "" must be answered, or it
// waits for ever.
var emptySet = newVersioned("empty", nil, map[string]string{})

// publishLocked merges shared and own resources and sets the snapshot once
// the proxy has its secrets. A type the proxy has nothing of its own in
// reuses the shared set as prepared; only merged types cost per proxy.
func (p *Publisher) publishLocked(ctx context.Context, nodeID string) error {
	own := p.proxies[nodeID]
	if !p.started || len(own[resourcev3.SecretType].items) == 0 {
		return nil // not before the mesh config and the secrets
	}
	shared := p.sharedOfLocked(nodeID)
	prev := p.published[nodeID]
	snap := &snapshot{Snapshot: &cachev3.Snapshot{VersionMap: make(map[string]map[string]string, len(snapshotTypes))},
		sets: make(map[resourcev3.Type]versioned, len(snapshotTypes)), from: make(map[resourcev3.Type][2]string, len(snapshotTypes))}
	same := prev != nil
	for _, t := range snapshotTypes {
		parts := [2]string{shared[t].version, own[t].version}
		v, ok := prev.reuse(t, parts)
		if !ok {
			// Merging a type the proxy has resources of its own in costs a
			// map entry per resource: not again for a type nothing moved in
			// (a proxy's inbound route beside 1,000 shared routes, on every
			// endpoint change).
			v, same = merge(shared[t], own[t]), false
		}
		snap.Resources[cachev3.GetResponseType(t)] = v.resources
		snap.VersionMap[t] = v.versionMap
		snap.sets[t], snap.from[t] = v, parts
	}
	if same {
		return nil // nothing moved for this proxy (a change outside its scope)
	}
	if err := complete(shared, own); err != nil {
		return fmt.Errorf("xds: snapshot for %s is inconsistent: %w", nodeID, err)
	}
	if err := p.cache.SetSnapshot(ctx, nodeID, snap); err != nil {
		return err
	}
	p.published[nodeID] = snap
	p.trackLocked(nodeID, snap.Snapshot)
	return nil
}

// reuse returns the snapshot's set of type t if it was merged from parts.
func (s *snapshot) reuse(t resourcev3.Type, parts [2]string) (versioned, bool) {
	if s == nil {
		return versioned{}, false
	}
	if s.from[t] != parts {
		return versioned{}, false
	}
	return s.sets[t], true
}

// trackLocked notes which types a model change moved for the proxy.
func (p *Publisher) trackLocked(nodeID string, snap *cachev3.Snapshot) {
	c := p.conv[nodeID]
	if c == nil {
		c = &convergence{published: map[resourcev3.Type]string{}, pending: map[resourcev3.Type]string{}}
		p.conv[nodeID] = c
	}
	for _, t := range snapshotTypes {
		v := snap.GetVersion(t)
		if c.published[t] == v {
			continue
		}
		c.published[t] = v
		if !p.changedAt.IsZero() && t != resourcev3.SecretType {
			c.pending[t] = v
		}
	}
	if len(c.pending) > 0 && c.changedAt.IsZero() && !p.changedAt.IsZero() {
		c.changedAt = p.changedAt
	}
}

// complete checks that every route and endpoint set the proxy's own
// resources name is in its snapshot (the shared set was checked alone by
// SetAll). Unlike go-control-plane's Consistent it allows resources nobody
// references (routes of proxyless gRPC API listeners, shared routes a
// proxy's listeners do not use).
func complete(shared, own map[resourcev3.Type]versioned) error {
	for _, v := range own {
		for t, names := range v.refs {
			for name := range names {
				if _, ok := shared[t].resources.Items[name]; ok {
					continue
				}
				if _, ok := own[t].resources.Items[name]; !ok {
					return fmt.Errorf("%s %q is referenced but missing", shortType(t), name)
				}
			}
		}
	}
	return nil
}

// selfComplete checks that a set of resources has every route and endpoint
// set it references.
func selfComplete(set map[resourcev3.Type]versioned) error {
	for _, v := range set {
		for t, names := range v.refs {
			for name := range names {
				if _, ok := set[t].resources.Items[name]; !ok {
					return fmt.Errorf("%s %q is referenced but missing", shortType(t), name)
				}
			}
		}
	}
	return nil
}

func merge(shared, own versioned) versioned {
	switch {
	case len(own.items) == 0 && len(shared.items) == 0:
		return emptySet
	case len(own.items) == 0:
		return shared
	case len(shared.items) == 0:
		return own
	}
	h := sha256.Sum256([]byte(shared.version + "+" + own.version))
	version := hex.EncodeToString(h[:8])
	items := slices.Concat(shared.items, own.items)
	vm := make(map[string]string, len(shared.versionMap)+len(own.versionMap))
	maps.Copy(vm, shared.versionMap)
	maps.Copy(vm, own.versionMap)
	v := newVersioned(version, items, vm)
	v.reuse = &shared
	return v
}

// hashAll computes each type's content-hash version: the hash of its
// resources' names and the hashes of their deterministic encodings, in name
// order. Two replicas with
// the same input agree, and a reconnect sends nothing new.
func hashAll(res Resources, keepRaw bool) (map[resourcev3.Type]versioned, error) {
	return hashWith(res, keepRaw, nil)
}

// encoded is a resource's deterministic encoding and its version.
type encoded struct {
	raw     []byte
	version string
}

// encodingCache keeps the encodings of the last shared resources by
// resource value: the translator gives back the same values for what did
// not change, so a change encodes only what it touched. prev is read,
// next filled (what the next change may reuse).
type encodingCache struct {
	prev, next map[types.Resource]encoded
}

// hashWith is hashAll, reusing and recording encodings in c (if not nil).
func hashWith(res Resources, keepRaw bool, c *encodingCache) (map[resourcev3.Type]versioned, error) {
	out := make(map[resourcev3.Type]versioned, len(res))
	opts := proto.MarshalOptions{Deterministic: true}
	for t, items := range res {
		sorted := slices.Clone(items)
		slices.SortFunc(sorted, func(a, b types.Resource) int {
			return compareStrings(cachev3.GetResourceName(a), cachev3.GetResourceName(b))
		})
		h := sha256.New()
		vm := make(map[string]string, len(sorted))
		var raw map[string][]byte
		if keepRaw {
			raw = make(map[string][]byte, len(sorted))
		}
		for _, r := range sorted {
			e, ok := c.lookup(r)
			if !ok {
				b, err := opts.Marshal(r)
				if err != nil {
					return nil, fmt.Errorf("xds: marshal %s %s: %w", t, cachev3.GetResourceName(r), err)
				}
				rh := sha256.Sum256(b)
				e = encoded{raw: b, version: hex.EncodeToString(rh[:8])}
			}
			c.record(r, e)
			// The set's version hashes each resource's name and content
			// hash, not the encodings again (megabytes per change).
			name := cachev3.GetResourceName(r)
			fmt.Fprintf(h, "%d:%s:%s\n", len(name), name, e.version)
			vm[name] = e.version
			if keepRaw {
				raw[name] = e.raw
			}
		}
		version := hex.EncodeToString(h.Sum(nil)[:8])
		v := newVersioned(version, sorted, vm)
		v.raw = raw
		if t == resourcev3.ListenerType || t == resourcev3.ClusterType {
			named := make(map[string]types.ResourceWithTTL, len(sorted))
			for _, r := range sorted {
				named[cachev3.GetResourceName(r)] = types.ResourceWithTTL{Resource: r}
			}
			v.refs = cachev3.GetResourceReferences(named)
		}
		out[t] = v
	}
	return out, nil
}

func (c *encodingCache) lookup(r types.Resource) (encoded, bool) {
	if c == nil {
		return encoded{}, false
	}
	if e, ok := c.next[r]; ok {
		return e, true
	}
	e, ok := c.prev[r]
	return e, ok
}

func (c *encodingCache) record(r types.Resource, e encoded) {
	if c != nil && c.next != nil {
		c.next[r] = e
	}
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

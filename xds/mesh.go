package xds

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/model"
	"github.com/meshd/meshd/xds/publish"
	"github.com/meshd/meshd/xds/resource"
	"github.com/meshd/meshd/xds/translate"
)

// Mesh turns model snapshots into published configuration: the shared
// resources are translated once per model change, and each connected
// proxy's own resources (inbound listener and local clusters) from the same
// model, published together. Safe for concurrent use.
type Mesh struct {
	pub *publish.Publisher
	log *slog.Logger
	// tr keeps each service's translation: a change translates only the
	// services it touched (guarded by mu).
	tr translate.Translator

	mu       sync.Mutex // held through a whole update, so no proxy sees two models mixed
	snap     *model.Snapshot
	proxies  map[string]*proxyRef
	problems []model.Problem
	// scopes counts the connected proxies of each egress scope (by key):
	// the scopes an update translates.
	scopes map[string]*scopeUse
	// always are the proxies whose own resources an update translates
	// even when no workload moved (see setAlways).
	always map[string]struct{}
	// stale: a translation failed (an update's or a connecting proxy's)
	// and may have left proxies' entries half-updated: the next update
	// goes over every proxy.
	stale bool
	// owned is each proxy's own resources as last translated, with what
	// they were translated from.
	owned map[string]ownEntry
	// perClient are the model's services whose endpoints depend on the
	// client (node-local, zone-hinted: every proxy's own resources hold
	// their clusters, see translate.PerClient), as of the translator's
	// generation perClientGen.
	perClient    []*model.Service
	perClientGen uint64
	// perClientMemo is translate.PerClient's result by the inputs it reads
	// (scope, node, zone) for the snapshot and generation it was made for:
	// the proxies of one node or zone share the same values (translated,
	// and in the publisher encoded, once).
	perClientMemo perClientMemo
}

// perClientMemo: see Mesh.perClientMemo.
type perClientMemo struct {
	snap *model.Snapshot
	gen  uint64
	// byNode and byZone: whether any per-client service reads the node
	// (node-local, node hints) or the zone (zone hints).
	byNode, byZone bool
	results        map[string]translate.Resources
}

// perClientFor is translate.PerClient for a proxy of scope, node and
// zone, the same values for every proxy for which they are the same.
func (m *Mesh) perClientFor(scope model.Egress, node, zone string) translate.Resources {
	memo := &m.perClientMemo
	if memo.snap != m.snap || memo.gen != m.perClientGen || memo.results == nil {
		*memo = perClientMemo{snap: m.snap, gen: m.perClientGen, results: map[string]translate.Resources{}}
		for _, svc := range m.perClient {
			memo.byNode = memo.byNode || svc.NodeLocal || svc.NodeHints
			memo.byZone = memo.byZone || svc.ZoneHints
		}
	}
	if !memo.byNode {
		node = ""
	}
	if !memo.byZone {
		zone = ""
	}
	key := scope.Key() + "\x00" + node + "\x00" + zone
	res, ok := memo.results[key]
	if !ok {
		res = translate.PerClient(m.snap, m.perClient, scope, node, zone)
		memo.results[key] = res
	}
	return res
}

// ownEntry is a proxy's own resources and their inputs: the proxy, its
// workload (a copy) and the snapshot-wide settings its inbound side uses.
type ownEntry struct {
	peer Peer
	// from is the model's workload (never mutated: the same pointer is the
	// same workload), workload a copy of it, compared when the pointer
	// differs.
	from     *model.Workload
	workload *model.Workload
	settings inboundSettings
	// perClientGen is the per-client services' generation then.
	perClientGen uint64
	res          resource.Resources
	// inbound is what res holds of the proxy's inbound side (see inbound):
	// kept when only the per-client services moved.
	inbound resource.Resources
}

// proxyRef is a connected proxy (refs: its streams) and what the last
// update (or its AddProxy) found for it: its node's workload in the model
// (nil: none), and its egress scope then ("" and nil: none).
type proxyRef struct {
	peer   Peer
	refs   int
	w      *model.Workload
	scope  string
	egress model.Egress
}

// scopeUse is an egress scope and how many connected proxies have it.
type scopeUse struct {
	egress  model.Egress
	proxies int
}

// NewMesh returns a Mesh publishing into pub.
func NewMesh(pub *publish.Publisher, log *slog.Logger) *Mesh {
	if log == nil {
		log = slog.Default()
	}
	return &Mesh{pub: pub, log: log, proxies: map[string]*proxyRef{}, owned: map[string]ownEntry{},
		scopes: map[string]*scopeUse{}, always: map[string]struct{}{}}
}

// Update publishes a new model. It returns the translation's problems
// (addresses claimed twice); each is logged once, when it first appears.
// A model the translator fails on (a panic: a meshd bug met on some input)
// is not published: the configuration published before stays, and Update
// returns the error with its stack (see translated).
//
// Only a model whose inbound settings or node-local services moved goes
// over every connected proxy. A change of workloads (a pod, a policy)
// goes over the proxies of the workloads that moved, found by comparing
// the two workload lists (sorted, their unchanged workloads the same
// pointers); an endpoint or service change over none of them. The proxies whose own resources read
// services (see setAlways) are gone over every time, and the publisher
// goes over the proxies of what moved.
func (m *Mesh) Update(ctx context.Context, snap *model.Snapshot) ([]model.Problem, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var shared resource.Lists
	var problems []model.Problem
	own := map[string]resource.Resources{}
	var scopeOf map[string]string
	scopes := make(map[string]resource.Lists, len(m.scopes))
	prev, prevProblems := m.snap, m.problems
	every := m.stale || prev == nil || settingsOf(prev) != settingsOf(snap)
	var moved []string // the keys of the workloads that moved (unset if every)
	if !every && !model.SameList(prev.Workloads, snap.Workloads) {
		moved = workloadsMoved(prev.Workloads, snap.Workloads)
	}
	err := m.translated(func() {
		shared, problems = m.tr.Shared(snap)
		// A per-client service that moved moves every proxy's own
		// resources (each holds its clusters).
		if nl, gen := m.tr.PerClientServices(); gen != m.perClientGen {
			m.perClient, m.perClientGen, every = nl, gen, true
		}
		for _, p := range problems {
			if !slices.Contains(m.problems, p) {
				m.log.Warn("xds: translation problem", "problem", p.String())
			}
		}
		problems = slices.Clip(problems) // the translator's: appended to below
		m.snap = snap
		// The proxies gone over: every one, or those of the workloads that
		// moved (every other proxy's workload is the one it had); scopeOf
		// holds their scopes.
		size := len(moved)
		if every {
			size = len(m.proxies)
		}
		scopeOf = make(map[string]string, size)
		if every {
			for node, ref := range m.proxies {
				problems = m.visit(snap, node, ref, own, scopeOf, problems)
			}
		} else {
			for _, node := range moved {
				if ref := m.proxies[node]; ref != nil { // nil: no proxy of that pod is connected
					problems = m.visit(snap, node, ref, own, scopeOf, problems)
				}
			}
		}
		for node := range m.always {
			if _, done := scopeOf[node]; !done {
				problems = m.ownOf(node, m.proxies[node], own, problems)
			}
		}
		for key, use := range m.scopes {
			scopes[key], _ = m.tr.ScopedKey(snap, key, use.egress) // its problems are the mesh's, reported above
		}
	})
	if err != nil {
		m.snap, m.problems = prev, prevProblems
		return nil, err
	}
	m.problems, m.stale = problems, false
	return problems, m.pub.SetScoped(ctx, snap.ChangedAt, shared, scopes, own, scopeOf)
}

// visit goes over a proxy in an update of snap: its workload and scope
// followed, its own resources translated into own if they moved, its scope
// recorded in scopeOf.
func (m *Mesh) visit(snap *model.Snapshot, node string, ref *proxyRef, own map[string]resource.Resources, scopeOf map[string]string, problems []model.Problem) []model.Problem {
	if w := snap.Workload(node); w != ref.w {
		ref.w = w
		m.setScope(ref)
	}
	scopeOf[node] = ref.scope
	return m.ownOf(node, ref, own, problems)
}

// ownOf translates the own resources of a proxy of an update (ref.w is
// its workload in the update's model) into own if they moved, and appends
// the problem of a translation that failed.
func (m *Mesh) ownOf(node string, ref *proxyRef, own map[string]resource.Resources, problems []model.Problem) []model.Problem {
	res, changed, failed, stack := m.ownSafely(ref.peer, ref.w)
	switch {
	case failed != nil:
		// This proxy keeps the resources of its own it had; the others and
		// the shared ones move on.
		problems = append(problems, *failed)
		if !slices.Contains(m.problems, *failed) {
			m.log.Error("xds: a proxy's own configuration failed to translate; it keeps the one it had", "proxy", node, "error", failed.Message, "stack", stack)
		}
	case changed:
		own[node] = res // only proxies whose own resources moved are hashed again
	}
	m.setAlways(node, ref, failed != nil)
	return problems
}

// setAlways records whether a proxy's own resources are translated on
// every update, also one that moves no workload: they read more than its
// workload and the model's settings (a sidecar without interception: every
// service of its scope), or their last translation failed (tried again).
func (m *Mesh) setAlways(node string, ref *proxyRef, failed bool) {
	if failed || ref.w != nil && ref.w.NoInterception {
		m.always[node] = struct{}{}
	} else {
		delete(m.always, node)
	}
}

// setScope sets a proxy's egress scope from its peer and workload, and
// counts it in the scope's proxies.
func (m *Mesh) setScope(ref *proxyRef) {
	e, key := egress(ref.peer, ref.w), ""
	if e != nil {
		key = e.Key()
	}
	if key == ref.scope {
		ref.egress = e
		return
	}
	m.leaveScope(ref)
	ref.scope, ref.egress = key, e
	if key == "" {
		return
	}
	use := m.scopes[key]
	if use == nil {
		use = &scopeUse{egress: e}
		m.scopes[key] = use
	}
	use.proxies++
}

// leaveScope uncounts a proxy from its scope's proxies.
func (m *Mesh) leaveScope(ref *proxyRef) {
	if use := m.scopes[ref.scope]; use != nil {
		if use.proxies--; use.proxies <= 0 {
			delete(m.scopes, ref.scope)
		}
	}
	ref.scope, ref.egress = "", nil
}

// workloadsMoved returns the keys of the workloads added, removed or
// changed from one list to the next, both sorted by key as the model keeps
// them: a walk over both that compares pointers (a workload that did not
// change is the same pointer) and builds keys only where they differ.
func workloadsMoved(from, to []*model.Workload) []string {
	var out []string
	i, j := 0, 0
	for i < len(from) || j < len(to) {
		switch {
		case i < len(from) && j < len(to) && from[i] == to[j]:
			i, j = i+1, j+1
		case j == len(to):
			out = append(out, from[i].Key())
			i++
		case i == len(from):
			out = append(out, to[j].Key())
			j++
		default:
			a, b := from[i].Key(), to[j].Key()
			switch c := strings.Compare(a, b); {
			case c < 0: // gone
				out = append(out, a)
				i++
			case c > 0: // new
				out = append(out, b)
				j++
			default: // changed
				out = append(out, b)
				i, j = i+1, j+1
			}
		}
	}
	return out
}

// settingsOf is the model's settings every proxy's inbound side reads.
func settingsOf(snap *model.Snapshot) inboundSettings {
	if snap == nil {
		return inboundSettings{}
	}
	return inboundSettings{snap.TrustDomain, snap.ConnectionMaxAge, snap.DetectionTimeout}
}

// translated runs f, a translation (under mu). A panic in it is a bug of meshd's
// met on some input (every model should translate, with its problems
// reported): rather than crash-loop the control plane for as long as that
// input exists (no certificate renewed, no proxy reconnected), it becomes
// an error with its stack, and the translator and the proxies' own
// resources start afresh (a translation cut short may have left them
// half-updated).
func (m *Mesh) translated(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			m.tr, m.owned, m.stale = translate.Translator{}, map[string]ownEntry{}, true
			err = fmt.Errorf("xds: translation failed, the configuration published before is kept (a meshd bug: please report it with this stack): %v\n%s", r, debug.Stack())
		}
	}()
	f()
	return nil
}

// egress is the proxy's outbound scope (nil: every service): its pod's
// (w, the model's workload of the proxy's node), when the proxy is the
// pod's.
func egress(p Peer, w *model.Workload) model.Egress {
	// The scope first: the identity's string is made anew (every proxy, on
	// every change).
	if w != nil && w.Egress != nil && w.Identity == p.Identity.String() {
		return w.Egress
	}
	return nil
}

// Snapshot returns the model last published (nil before the first).
func (m *Mesh) Snapshot() *model.Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.snap
}

// AddProxy sets a connecting proxy's own resources from the current model.
// A second stream of the same proxy shares them. A proxy refused, or whose
// configuration fails, is not added (RemoveProxy is not to be called).
func (m *Mesh) AddProxy(ctx context.Context, p Peer) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.snap.Workload(p.NodeID)
	if w != nil && w.Identity != p.Identity.String() {
		m.log.Warn("xds: proxy's certificate identity differs from its pod's; refused", "proxy", p.NodeID, "identity", p.Identity.String(), "pod_identity", w.Identity)
		return status.Errorf(codes.PermissionDenied, "xds: %s runs as %s; this certificate is %s", p.NodeID, w.Identity, p.Identity)
	}
	ref := m.proxies[p.NodeID]
	if ref == nil {
		ref = &proxyRef{}
		m.proxies[p.NodeID] = ref
	}
	ref.peer, ref.refs, ref.w = p, ref.refs+1, w
	m.setScope(ref)
	m.setAlways(p.NodeID, ref, false)
	var scope resource.Lists
	var res resource.Resources
	err := m.translated(func() {
		if ref.scope != "" && !m.pub.HasScope(ref.scope) {
			scope, _ = m.tr.ScopedKey(m.snap, ref.scope, ref.egress)
		}
		res, _ = m.ownCached(p, w)
	})
	if err != nil {
		m.log.Error("xds: proxy's configuration not translated", "proxy", p.NodeID, "error", err)
		m.releaseLocked(p.NodeID)
		return status.Errorf(codes.Internal, "xds: configuration for %s could not be translated (see meshd's log)", p.NodeID)
	}
	if err := m.pub.SetProxyScope(ctx, p.NodeID, ref.scope, scope, res); err != nil {
		m.releaseLocked(p.NodeID)
		return err
	}
	return nil
}

// RemoveProxy forgets a proxy's stream; the last one takes its resources.
func (m *Mesh) RemoveProxy(nodeID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.releaseLocked(nodeID)
}

func (m *Mesh) releaseLocked(nodeID string) {
	ref := m.proxies[nodeID]
	if ref == nil {
		return
	}
	if ref.refs <= 1 {
		m.leaveScope(ref)
		delete(m.proxies, nodeID)
		delete(m.always, nodeID)
		delete(m.owned, nodeID)
		return
	}
	ref.refs--
}

// ownSafely is ownCached for one proxy of an update, with a panic of its
// translation (a meshd bug met on this proxy's workload) turned into a
// Problem of its pod (failed, with the panic's stack): one workload meshd cannot translate keeps
// its proxy's own resources as they were instead of failing the update of
// every proxy. Its entry in owned is left as it was (ownCached records one
// only when the translation returns), so the next update tries again. The
// kept inbound listener names local clusters from the shared set: a port
// that no workload has any more lost its cluster, and the kept listener
// answers it with an error (the pod's ports changed while its translation
// fails: the rest of its inbound side works).
func (m *Mesh) ownSafely(p Peer, w *model.Workload) (res resource.Resources, changed bool, failed *model.Problem, stack string) {
	defer func() {
		if r := recover(); r != nil {
			stack = string(debug.Stack())
			failed = &model.Problem{Kind: "Pod", Reason: "TranslationFailed",
				Message: fmt.Sprintf("the sidecar's inbound configuration could not be translated and keeps the one it had (a meshd bug: please report it with meshd's log): %v", r)}
			if w != nil {
				failed.Namespace, failed.Name, failed.UID = w.Namespace, w.Name, w.UID
			} else {
				failed.Name = p.NodeID
			}
		}
	}()
	res, changed = m.ownCached(p, w)
	return res, changed, nil, ""
}

// ownCached is own, translated again only when what it depends on moved:
// the proxy, its workload w (the model's of its node), the snapshot's
// settings for the inbound side (and, for a sidecar without interception,
// every service: not cached).
func (m *Mesh) ownCached(p Peer, w *model.Workload) (resource.Resources, bool) {
	settings := settingsOf(m.snap)
	prev, ok := m.owned[p.NodeID]
	same := ok && prev.peer == p && settings == prev.settings && (w == nil) == (prev.workload == nil) &&
		(w == nil || !w.NoInterception && (w == prev.from || reflect.DeepEqual(*w, *prev.workload)))
	if same && prev.perClientGen == m.perClientGen {
		if prev.from != w {
			prev.from = w
			m.owned[p.NodeID] = prev
		}
		return prev.res, false
	}
	inbound := prev.inbound // only the per-client services moved: the same values
	if !same {
		inbound = m.inbound(p, w)
	}
	res := m.withPerClient(inbound, p, w)
	entry := ownEntry{peer: p, from: w, settings: settings, perClientGen: m.perClientGen, res: res, inbound: inbound}
	if w != nil {
		c := *w
		entry.workload = &c
	}
	m.owned[p.NodeID] = entry
	return res, true
}

// inboundSettings are the snapshot-wide settings a proxy's inbound side
// uses.
type inboundSettings struct {
	trustDomain                 string
	connectionMaxAge, detection time.Duration
}

// inbound translates a proxy's inbound side (translate.Proxy). A proxy
// whose pod is unknown, or runs under another service account than its
// certificate says, gets none.
func (m *Mesh) inbound(p Peer, w *model.Workload) resource.Resources {
	switch {
	case w == nil:
		if m.snap != nil {
			m.log.Info("xds: proxy has no pod in the mesh model yet", "proxy", p.NodeID)
		}
	case w.Identity != p.Identity.String():
		m.log.Warn("xds: proxy's certificate identity differs from its pod's; no inbound config", "proxy", p.NodeID, "identity", p.Identity.String(), "pod_identity", w.Identity)
	default:
		return translate.Proxy(m.snap, w)
	}
	return nil
}

// withPerClient is a proxy's own resources: its inbound side and the
// clusters and endpoint sets of the per-client services for it. The
// listener, route, cluster and endpoint types are always present, so a
// workload that lost its ports (or its HTTP ports) loses its inbound
// listener (its inbound routes), and a proxy loses the clusters of
// per-client services that are no more. inbound is not modified.
func (m *Mesh) withPerClient(inbound resource.Resources, p Peer, w *model.Workload) resource.Resources {
	res := resource.Resources{resourcev3.ListenerType: nil, resourcev3.RouteType: nil, resourcev3.ClusterType: nil, resourcev3.EndpointType: nil}
	for t, items := range inbound {
		res[t] = items
	}
	if len(m.perClient) > 0 {
		var scope model.Egress // as egress(p, w) finds it
		node, zone := "", ""
		if w != nil && w.Identity == p.Identity.String() { // the proxy's pod
			scope, node, zone = w.Egress, w.Node, w.Zone
		}
		for t, items := range m.perClientFor(scope, node, zone) {
			res[t] = append(slices.Clip(res[t]), items...) // a copy: inbound's lists stay as they are
		}
	}
	return res
}

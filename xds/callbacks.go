package xds

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/xds/cache"
	"github.com/meshd/meshd/xds/resource"
)

// Hooks are told when an authenticated proxy starts or stops asking for
// configuration. OnConnect runs before the first request of the stream is
// answered, so it may publish the proxy's snapshot (secrets first). Both must
// be safe for concurrent use and return quickly.
type Hooks interface {
	// OnConnect prepares the proxy's configuration; an error fails the
	// request with Unavailable, and the proxy's retry calls OnConnect again.
	OnConnect(ctx context.Context, p Peer) error
	OnDisconnect(p Peer)
}

// ACKHook, when the Hooks implement it too, hears every ACK: the version a
// proxy now holds of a type. Called outside any lock of the server.
type ACKHook interface {
	OnACK(nodeID, typeURL, version string)
}

// streamCache is the cache's side of the streams (cache.Cache): what each
// stream holds is kept there, found by the request go-control-plane hands
// the cache after these callbacks saw it. Every request is noted before it
// is checked, and every stream that opened is reported closed. Noting a
// request takes its subscription (names, initial versions) out of it: the
// cache keeps each stream's subscription, shared among streams, and
// go-control-plane's server, which reads the request after the callbacks,
// keeps none.
type streamCache interface {
	NoteRequest(stream int64, req *discoveryv3.DiscoveryRequest)
	NoteDeltaRequest(stream int64, req *discoveryv3.DeltaDiscoveryRequest)
	StreamClosed(stream int64)
}

// callbacks implements go-control-plane's server callbacks: it authenticates
// every stream, authorizes every request against the stream's peer, and
// records what was sent, ACKed and NACKed.
type callbacks struct {
	log     *slog.Logger
	streams *streams
	hooks   Hooks
	ctx     context.Context
	metrics *metrics
	resolve ProxyResolver
	// cache is told which stream each request came on, and when a stream
	// closed: it keeps what each stream holds.
	cache streamCache
	// snapshot returns a node's published snapshot (the cache's).
	snapshot func(node string) (cachev3.ResourceSnapshot, error)
	// trustDomain, if set, is the only one whose certificates get a stream.
	trustDomain string
}

// The type URL given to the open callbacks is the stream's service: "" for
// ADS, the secret type for SDS, where a request may leave its type URL
// empty; the checks apply to that effective type.
func (c *callbacks) OnStreamOpen(ctx context.Context, id int64, typeURL string) error {
	return c.open(ctx, id, false, typeURL)
}

func (c *callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, typeURL string) error {
	return c.open(ctx, id, true, typeURL)
}

func (c *callbacks) open(ctx context.Context, id int64, delta bool, serviceType string) error {
	p, err := PeerFromContext(ctx)
	if err == nil && c.trustDomain != "" && p.Identity.TrustDomain != c.trustDomain {
		c.metrics.denied.Inc()
		err = errDenied("client certificate of trust domain %q; this mesh is %q", p.Identity.TrustDomain, c.trustDomain)
	}
	if err != nil {
		c.log.Warn("xds: stream refused", "stream", id, "error", err)
		return err
	}
	c.streams.open(id, p, delta, serviceType)
	c.metrics.connected.Inc()
	c.log.Info("xds: stream open", "stream", id, "proxy", p.NodeID, "proxy_id", p.ProxyID, "pod_uid", p.PodUID, "identity", p.Identity.String(), "delta", delta)
	return nil
}

func (c *callbacks) OnStreamClosed(id int64, _ *corev3.Node)      { c.closed(id) }
func (c *callbacks) OnDeltaStreamClosed(id int64, _ *corev3.Node) { c.closed(id) }

func (c *callbacks) closed(id int64) {
	c.cache.StreamClosed(id)
	p, announced, opened := c.streams.close(id)
	if !opened {
		return
	}
	c.metrics.connected.Dec()
	if p.NodeID == "" {
		return // a proxy-ID stream that never bound to a pod
	}
	c.log.Info("xds: stream closed", "stream", id, "proxy", p.NodeID)
	if announced && c.hooks != nil {
		c.hooks.OnDisconnect(p)
	}
}

// The cache takes a request's names out of it when noting it (it keeps
// the stream's subscription itself), so they are read first.

func (c *callbacks) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	typeURL := c.effectiveType(id, req.GetTypeUrl())
	if err := c.served(id, typeURL); err != nil {
		return err
	}
	names := req.GetResourceNames()
	c.cache.NoteRequest(id, req) // the cache finds what the stream holds by it
	var secrets []string
	if typeURL == resourcev3.SecretType {
		secrets = names
	}
	return c.request(id, req.GetNode(), typeURL, secrets, req.GetResponseNonce(), req.GetVersionInfo(), req.GetErrorDetail(), asked{names: names})
}

func (c *callbacks) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	typeURL := c.effectiveType(id, req.GetTypeUrl())
	if err := c.served(id, typeURL); err != nil {
		return err
	}
	a := asked{names: req.GetResourceNamesSubscribe(), gone: req.GetResourceNamesUnsubscribe()}
	c.cache.NoteDeltaRequest(id, req) // the cache finds what the stream holds by it
	var secrets []string
	if typeURL == resourcev3.SecretType {
		secrets = a.names
	}
	if err := c.request(id, req.GetNode(), typeURL, secrets, req.GetResponseNonce(), "", req.GetErrorDetail(), a); err != nil {
		return err
	}
	// After request: the stream is bound to its node by now.
	return c.boundSubscriptions(id, typeURL, a)
}

// served refuses a request for a type meshd does not serve: nothing would
// ever answer it, and each type a stream asks for is a watch and state kept
// for the stream's life (by go-control-plane's server too), so a client
// inventing type URLs could grow them without bound. It also bounds what
// one stream can have queued (go-control-plane's server queues a stream's
// responses of every type in one channel with room for one per type).
func (c *callbacks) served(id int64, typeURL string) error {
	if resource.Order(typeURL) < resource.NumTypes {
		return nil
	}
	var p Peer
	c.streams.with(id, func(s *stream) { p = s.peer })
	c.log.Warn("xds: request for a type meshd does not serve", "stream", id, "proxy", p.NodeID, "identity", p.Identity.String(), "type_url", typeURL)
	return status.Errorf(codes.InvalidArgument, "xds: meshd does not serve %q (it serves %s)", typeURL, servedTypes)
}

// servedTypes lists the types meshd serves, for errors.
var servedTypes = func() string {
	types := resource.Types()
	return strings.Join(types[:], ", ")
}()

// resubscribe is a delta stream's subscribed names after a request that
// subscribes to some and drops others (sorted).
func resubscribe(held []string, a asked) []string {
	set := make(map[string]struct{}, len(held)+len(a.names))
	for _, n := range held {
		set[n] = struct{}{}
	}
	for _, n := range a.names {
		set[n] = struct{}{}
	}
	for _, n := range a.gone {
		delete(set, n)
	}
	return slices.Sorted(maps.Keys(set))
}

// effectiveType is the request's type URL, or the stream service's when the
// request leaves it empty (SDS).
func (c *callbacks) effectiveType(id int64, typeURL string) string {
	if typeURL != "" {
		return typeURL
	}
	c.streams.with(id, func(s *stream) { typeURL = s.serviceType })
	return typeURL
}

// inSync records delta streams the cache found holding exactly the
// published version of a type they started with initial versions (a proxy
// reconnecting, e.g. after meshd restarted): nothing was sent (versions
// are content hashes), yet the type is in sync, recorded sent and ACKed at
// that version unless a response went out before (then tracked as usual).
// The cache calls it from the stream's goroutine or under the Publisher's
// lock: the ACK hook (the Publisher) hears of it later.
func (c *callbacks) inSync(synced []cache.InSync) {
	h, hooked := c.hooks.(ACKHook)
	now := c.streams.clock.Now()
	for _, st := range synced {
		var nodeID string
		recorded := c.streams.with(st.Stream, func(s *stream) {
			ts := s.typ(st.TypeURL)
			if ts.SentVersion != "" {
				return
			}
			ts.SentVersion, ts.SentAt, ts.AckedVersion, ts.AckedAt = st.Version, now, st.Version, now
			nodeID = s.peer.NodeID
		})
		if hooked && recorded && nodeID != "" {
			go h.OnACK(nodeID, st.TypeURL, st.Version)
		}
	}
}

// request authorizes one request and records its ACK or NACK.
func (c *callbacks) request(id int64, node *corev3.Node, typeURL string, secrets []string, nonce, version string, nack *rpcstatus.Status, names asked) error {
	var peer Peer
	var announce bool
	var err error
	var acked string
	if err := c.bind(id, node); err != nil {
		return err
	}
	found := c.streams.with(id, func(s *stream) {
		peer = s.peer
		if node == nil && !s.named {
			err = status.Error(codes.InvalidArgument, "xds: the first request of a stream must carry the node")
			return
		}
		s.named = true
		if err = authorizeNode(s.peer, node); err != nil {
			return
		}
		if err = authorizeSecrets(secrets); err != nil {
			return
		}
		announce = !s.announced
		s.announced = true
		acked = c.record(s, typeURL, nonce, version, nack, names)
	})
	if !found {
		return status.Error(codes.Unauthenticated, errNoPeer.Error())
	}
	if err != nil {
		if status.Code(err) == codes.PermissionDenied {
			c.metrics.denied.Inc()
		}
		c.log.Warn("xds: request denied", "stream", id, "proxy", peer.NodeID, "proxy_id", peer.ProxyID, "type_url", typeURL, "error", err)
		return err
	}
	if h, ok := c.hooks.(ACKHook); ok && acked != "" {
		h.OnACK(peer.NodeID, typeURL, acked)
	}
	if announce && c.hooks != nil {
		if err := c.hooks.OnConnect(c.ctx, peer); err != nil {
			c.streams.with(id, func(s *stream) { s.announced = false })
			if status.Code(err) == codes.PermissionDenied {
				c.metrics.denied.Inc()
				c.log.Warn("xds: proxy refused", "proxy", peer.NodeID, "identity", peer.Identity.String(), "error", err)
				return err
			}
			c.log.Error("xds: proxy not prepared", "proxy", peer.NodeID, "error", err)
			return status.Errorf(codes.Unavailable, "xds: configuration for %s not ready: %v", peer.NodeID, err)
		}
	}
	return nil
}

// bind resolves the node of a stream authenticated by a proxy-ID
// certificate, or checks the pod of a pod-bound one, on its first request
// (outside the streams lock: the resolver reads the mesh model).
func (c *callbacks) bind(id int64, node *corev3.Node) error {
	var p Peer
	if !c.streams.with(id, func(s *stream) { p = s.peer }) {
		return nil
	}
	var err error
	switch {
	case p.ProxyID != "" && p.NodeID == "":
		err = bindNode(&p, node, c.resolve)
	case p.PodUID != "" && !p.podChecked:
		err = bindPodUID(&p, c.resolve)
	default:
		return nil
	}
	if err != nil {
		if status.Code(err) == codes.PermissionDenied {
			c.metrics.denied.Inc()
		}
		c.log.Warn("xds: proxy not bound to a pod", "stream", id, "proxy_id", p.ProxyID, "pod_uid", p.PodUID, "node", node.GetId(), "error", err)
		return err
	}
	c.streams.with(id, func(s *stream) {
		if s.peer.NodeID == "" {
			s.peer.NodeID = p.NodeID
		}
		s.peer.podChecked = s.peer.podChecked || p.podChecked
	})
	return nil
}

// asked is what a request says of the names a stream wants: all of them
// (SotW), or those subscribed to and those dropped (delta).
type asked struct {
	names, gone []string
}

// record notes an ACK or a NACK and returns the ACKed version ("" for a
// NACK or a first request); called under the streams lock.
func (c *callbacks) record(s *stream, typeURL, nonce, version string, nack *rpcstatus.Status, names asked) string {
	ts := s.typ(typeURL)
	switch {
	case !s.delta && len(names.names) > 0:
		// The request's names, not a copy: a request is not changed once
		// handled, and SotW proxies send every name with each ACK (a copy
		// per request was 16 bytes x names x proxies). The codec made
		// them canonical, shared among streams, and an ACK's are the
		// previous request's slice (see request.go).
		ts.Subscribed = names.names
	case s.delta && len(ts.Subscribed) == 0 && len(names.gone) == 0 && len(names.names) > 0:
		ts.Subscribed = lists.share(names.names) // a delta stream's first subscription
	case s.delta && len(names.names)+len(names.gone) > 0:
		ts.Subscribed = lists.share(resubscribe(ts.Subscribed, names))
	}
	if nonce == "" {
		return "" // first request of this type: neither ACK nor NACK
	}
	sentVersion := s.nonces.version(typeURL, nonce)
	if nack != nil {
		ts.NACKs++
		msg := truncate(nack.GetMessage(), maxNACKText)
		ts.LastNACK = &NACK{Version: sentVersion, Nonce: nonce, Error: msg, At: c.streams.clock.Now()}
		c.metrics.nacks.WithLabelValues(metricType(typeURL)).Inc()
		// Envoy does not repeat a NACK; a client that does is logged at
		// the 1st, 2nd, 4th, 8th... of each type.
		if n := ts.NACKs; n&(n-1) == 0 {
			c.log.Warn("xds: NACK", "proxy", s.peer.NodeID, "type_url", truncate(typeURL, 200), "nonce", truncate(nonce, 64), "version", sentVersion, "nacks", n, "error", msg)
		}
		return ""
	}
	if version == "" {
		version = sentVersion
	}
	now := c.streams.clock.Now()
	if ts.SentNonce == nonce && !ts.SentAt.IsZero() {
		c.metrics.acked(typeURL, now.Sub(ts.SentAt))
	}
	ts.AckedVersion, ts.AckedNonce, ts.AckedAt = version, nonce, now
	return version
}

func (c *callbacks) OnStreamResponse(_ context.Context, id int64, req *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	c.sent(id, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
}

func (c *callbacks) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	c.sent(id, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
}

func (c *callbacks) sent(id int64, typeURL, nonce, version string) {
	c.metrics.pushed(typeURL)
	c.streams.with(id, func(s *stream) {
		ts := s.typ(typeURL)
		ts.SentVersion, ts.SentNonce, ts.SentAt = version, nonce, c.streams.clock.Now()
		ts.Responses++
		s.nonces.add(typeURL, nonce, version)
	})
}

// The REST (fetch) API is not served: every proxy must hold a stream.
func (c *callbacks) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error {
	return status.Error(codes.Unimplemented, "xds: REST fetch is not served; use ADS")
}
func (c *callbacks) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}

// maxNACKText bounds the error text of a NACK that meshd keeps and logs.
const maxNACKText = 1024

// metricType is a type URL's metric label: its short name for the types
// meshd serves (resource.Types), "other" for whatever else a client sends
// (the label set stays bounded).
func metricType(url string) string {
	if resource.Order(url) == len(resource.Types()) {
		return "other"
	}
	return resource.ShortType(url)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("... (%d bytes)", len(s))
}

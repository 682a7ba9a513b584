package xds

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/xds/resource"
)

// Bounds on what one delta stream may subscribe to. Names of resources the
// proxy's published configuration holds cost nothing extra (the mesh bounds
// them); names of resources that do not exist are remembered per stream and
// type, up to MaxUnknownNames. A real Envoy subscribes only to what its
// configuration references, so it meets unknown names only in the moment a
// resource is removed; a client that floods names is refused with
// ResourceExhausted instead of growing meshd's memory.
const (
	MaxUnknownNames = 1024
	MaxNameLength   = 1024
)

// unknownNames tracks, per type, the subscribed names a stream's snapshot
// does not hold. Guarded by streams.mu (it lives in stream).
type unknownNames map[string]map[string]struct{}

// boundSubscriptions checks a delta request's subscriptions against the
// node's published snapshot and the stream's allowance. It runs before the
// request reaches go-control-plane, so a refused request subscribes to
// nothing.
func (c *callbacks) boundSubscriptions(id int64, typeURL string, a asked) error {
	subscribe, unsubscribe := a.names, a.gone
	if len(subscribe) == 0 && len(unsubscribe) == 0 {
		return nil
	}
	var node string
	c.streams.with(id, func(s *stream) { node = s.peer.NodeID })
	known := func(string) bool { return false }
	if node != "" && c.snapshot != nil {
		if snap, err := c.snapshot(node); err == nil && snap != nil {
			if rs, ok := snap.(*resource.Snapshot); ok {
				set, _ := rs.SetOf(typeURL)
				known = set.Index().Has
			} else {
				all := snap.GetResources(typeURL)
				known = func(name string) bool { _, ok := all[name]; return ok }
			}
		}
	}
	var err error
	c.streams.with(id, func(s *stream) {
		if s.unknown == nil {
			s.unknown = unknownNames{}
		}
		set := s.unknown[typeURL]
		for _, n := range unsubscribe {
			delete(set, n)
		}
		for _, n := range subscribe {
			if len(n) > MaxNameLength {
				err = status.Errorf(codes.InvalidArgument, "xds: resource name of %d bytes (limit %d)", len(n), MaxNameLength)
				return
			}
			if known(n) || n == "*" {
				continue
			}
			if set == nil {
				set = map[string]struct{}{}
				s.unknown[typeURL] = set
			}
			set[n] = struct{}{}
			if len(set) > MaxUnknownNames {
				err = status.Errorf(codes.ResourceExhausted, "xds: stream subscribes to more than %d %s names that do not exist", MaxUnknownNames, resource.ShortType(typeURL))
				return
			}
		}
	})
	if err != nil {
		c.metrics.limited.WithLabelValues("subscribed_names").Inc()
		c.log.Warn("xds: subscription refused", "stream", id, "proxy", node, "type_url", typeURL, "error", err)
		return err
	}
	return nil
}

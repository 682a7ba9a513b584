package xds

import (
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
)

// nackGuard wraps the snapshot cache so that a NACKed version is not sent
// again. go-control-plane's SotW cache answers every request whose
// version_info differs from the snapshot's, and a NACK carries the last
// *accepted* version, so a persistent NACK would loop (go-control-plane
// #962). The guard rewrites a NACK's version_info to the version it rejects:
// the cache then waits for a new snapshot version instead of resending.
// Delta streams track per-resource versions and need no guard.
type nackGuard struct {
	cachev3.SnapshotCache
	streams *streams
}

func (g *nackGuard) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	if req.GetErrorDetail() != nil && req.GetResponseNonce() != "" {
		if v, ok := g.streams.nackedVersion(req.GetNode().GetId(), req.GetTypeUrl(), req.GetResponseNonce()); ok {
			r := proto.Clone(req).(*cachev3.Request)
			r.VersionInfo = v
			req = r
		}
	}
	return g.SnapshotCache.CreateWatch(req, sub, ch)
}

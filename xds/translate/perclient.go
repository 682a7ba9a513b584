package translate

import (
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/model"
)

// Services whose endpoints depend on where the client is
// (model.Service.PerClient: internalTrafficPolicy Local, zone hints) send
// a client only to some of their endpoints, so their clusters and
// endpoint sets differ from client to client: the shared translation
// leaves them out (it keeps their filter chains and routes, which name the
// cluster), and each proxy gets them among its own resources (PerClient).

// PerClient returns a proxy's clusters and endpoint sets of the per-client
// services (perClient, sorted by key) that its egress scope allows: the
// endpoints model.Service.ForClient gives a client on node in zone ("":
// not known, for a proxy without a pod or a pod not scheduled yet). A
// node without an endpoint of a node-local service gets an empty set: its
// calls fail, as kube-proxy drops them.
func PerClient(snap *model.Snapshot, perClient []*model.Service, scope model.Egress, node, zone string) Resources {
	res := Resources{}
	for _, svc := range perClient {
		if !scope.Allows(svc) {
			continue
		}
		ids := identities(svc) // every endpoint's: the cluster is the same for every client
		for _, p := range svc.Ports {
			name := ClusterName(svc, p.Port)
			mine := *svc
			mine.Endpoints, _ = svc.ForClient(p, node, zone)
			res[resourcev3.ClusterType] = append(res[resourcev3.ClusterType], serviceCluster(snap, svc, p, name, ids))
			res[resourcev3.EndpointType] = append(res[resourcev3.EndpointType], loadAssignment(name, &mine, p))
		}
	}
	return res
}

package translate

import (
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/model"
)

// Services with internalTrafficPolicy Local (model.Service.NodeLocal) send
// a client only to the endpoints on its own node, so their clusters and
// endpoint sets differ from node to node: the shared translation leaves
// them out (it keeps their filter chains and routes, which name the
// cluster), and each proxy gets them among its own resources (NodeLocal).

// NodeLocal returns a proxy's clusters and endpoint sets of the node-local
// services (nodeLocal, sorted by key) that its egress scope allows: the
// service's ready endpoints on node, all of them when the node is not
// known ("": a proxy without a pod, or a pod not scheduled yet). A node
// without an endpoint of the service gets an empty set: its calls fail,
// as kube-proxy drops them.
func NodeLocal(snap *model.Snapshot, nodeLocal []*model.Service, scope model.Egress, node string) Resources {
	res := Resources{}
	for _, svc := range nodeLocal {
		if !scope.Allows(svc) {
			continue
		}
		local := *svc
		if node != "" {
			local.Endpoints = nil
			for _, e := range svc.Endpoints {
				if e.Node == node {
					local.Endpoints = append(local.Endpoints, e)
				}
			}
		}
		ids := identities(svc) // every endpoint's: the cluster is the same on every node
		for _, p := range svc.Ports {
			name := ClusterName(svc, p.Port)
			res[resourcev3.ClusterType] = append(res[resourcev3.ClusterType], serviceCluster(snap, svc, p, name, ids))
			res[resourcev3.EndpointType] = append(res[resourcev3.EndpointType], loadAssignment(name, &local, p))
		}
	}
	return res
}

package publish

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/xds/resource"
)

// Sets are of prev's shape only when every type has prev's names, and a
// type whose resources reference others is prev's content: a cluster that
// names another endpoint set under its old name is a new shape.
func TestSameShape(t *testing.T) {
	ads := &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	cluster := func(eds string) map[resourcev3.Type]resource.Set {
		t.Helper()
		sets, err := resource.Own(resource.Resources{resourcev3.ClusterType: {&clusterv3.Cluster{Name: "backend",
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads, ServiceName: eds}}}})
		if err != nil {
			t.Fatal(err)
		}
		return sets
	}
	prev := cluster("a")
	if !sameShape(cluster("a"), prev) {
		t.Error("the same sets are not of the same shape")
	}
	next := cluster("b")
	next[resourcev3.ClusterType] = next[resourcev3.ClusterType].Since(prev[resourcev3.ClusterType])
	if !next[resourcev3.ClusterType].SameNames(prev[resourcev3.ClusterType]) {
		t.Fatal("the cluster set renamed nothing, but its names differ")
	}
	if sameShape(next, prev) {
		t.Error("a cluster naming another endpoint set is of the same shape")
	}
	if sameShape(map[resourcev3.Type]resource.Set{resourcev3.ClusterType: prev[resourcev3.ClusterType], resourcev3.EndpointType: resource.Empty()}, prev) {
		t.Error("sets with another type are of the same shape")
	}
}

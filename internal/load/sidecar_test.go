package load

import (
	"fmt"
	"slices"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestNameSet: a set of interned names says which it holds and names them
// in the order they were interned, across words.
func TestNameSet(t *testing.T) {
	table := nameTable{ids: map[string]int{}}
	var all []string
	for i := range 200 {
		all = append(all, fmt.Sprintf("n%d", i))
		if first, again := table.id(all[i]), table.id(all[i]); first != i || again != i {
			t.Fatalf("%s: interned as %d, then %d; want %d", all[i], first, again, i)
		}
	}
	var s nameSet
	var want []string
	for _, i := range []int{0, 5, 63, 64, 127, 128, 199} {
		s.add(i)
		want = append(want, all[i])
	}
	if got := s.names(&table); !slices.Equal(got, want) {
		t.Errorf("names: got %v, want %v", got, want)
	}
	if !s.has(63) || s.has(62) || s.has(1000) || s.empty() || len((nameSet{}).names(&table)) != 0 {
		t.Error("has/empty")
	}
	var sub nameSet
	sub.add(64)
	if !sub.subsetOf(s) || s.subsetOf(sub) {
		t.Error("subsetOf")
	}
}

func encode(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func edsCluster(t *testing.T, name string) []byte {
	return encode(t, &clusterv3.Cluster{Name: name, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{ServiceName: name + "-eds"}})
}

func rdsListener(t *testing.T, name, route string) []byte {
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: route}}})
	if err != nil {
		t.Fatal(err)
	}
	return encode(t, &listenerv3.Listener{Name: name, FilterChains: []*listenerv3.FilterChain{{
		Filters: []*listenerv3.Filter{{Name: "hcm", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}}})
}

// TestSidecarRemovals: a delta sidecar drops what a response removes (a
// cluster by its name, a listener and the routes only it named) and
// unsubscribes from what nothing references any more; a SotW response of
// clusters or listeners is all the sidecar holds.
func TestSidecarRemovals(t *testing.T) {
	sh := newShared()
	held := func(s *sidecar, typeURL string) []string {
		return s.names(typeURL)
	}
	t.Run("delta", func(t *testing.T) {
		s := newSidecar("n", true, nil, sh)
		if err := s.handle(resourcev3.ClusterType, [][]byte{edsCluster(t, "a"), edsCluster(t, "b")}, nil, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := s.handle(resourcev3.ListenerType, [][]byte{rdsListener(t, "l1", "r1"), rdsListener(t, "l2", "r2")}, nil, time.Now()); err != nil {
			t.Fatal(err)
		}
		var eds, rds nameSet
		if add, drop := s.resubscribe(resourcev3.EndpointType, &eds); !slices.Equal(add, []string{"a-eds", "b-eds"}) || len(drop) != 0 {
			t.Errorf("EDS subscribe %v, unsubscribe %v", add, drop)
		}
		_, _ = s.resubscribe(resourcev3.RouteType, &rds)
		if err := s.handle(resourcev3.ClusterType, nil, [][]byte{[]byte("a"), []byte("unknown")}, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := s.handle(resourcev3.ListenerType, nil, [][]byte{[]byte("l1")}, time.Now()); err != nil {
			t.Fatal(err)
		}
		if got := held(s, resourcev3.EndpointType); !slices.Equal(got, []string{"b-eds"}) {
			t.Errorf("EDS names after a removal: %v", got)
		}
		if got := held(s, resourcev3.RouteType); !slices.Equal(got, []string{"r2"}) {
			t.Errorf("RDS names after a removal: %v", got)
		}
		if add, drop := s.resubscribe(resourcev3.EndpointType, &eds); len(add) != 0 || !slices.Equal(drop, []string{"a-eds"}) {
			t.Errorf("EDS subscribe %v, unsubscribe %v", add, drop)
		}
		if add, drop := s.resubscribe(resourcev3.RouteType, &rds); len(add) != 0 || !slices.Equal(drop, []string{"r1"}) {
			t.Errorf("RDS subscribe %v, unsubscribe %v", add, drop)
		}
	})
	t.Run("sotw", func(t *testing.T) {
		s := newSidecar("n", false, nil, sh)
		for _, clusters := range [][][]byte{{edsCluster(t, "a"), edsCluster(t, "b")}, {edsCluster(t, "b")}} {
			if err := s.handle(resourcev3.ClusterType, clusters, nil, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		for _, listeners := range [][][]byte{{rdsListener(t, "l1", "r1"), rdsListener(t, "l2", "r2")}, {rdsListener(t, "l2", "r2")}} {
			if err := s.handle(resourcev3.ListenerType, listeners, nil, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		if got := held(s, resourcev3.EndpointType); !slices.Equal(got, []string{"b-eds"}) {
			t.Errorf("EDS names: %v", got)
		}
		if got := held(s, resourcev3.RouteType); !slices.Equal(got, []string{"r2"}) {
			t.Errorf("RDS names: %v", got)
		}
	})
}

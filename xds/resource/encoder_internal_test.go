package resource

import (
	"fmt"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// TestEncoderForgets: an Encoder whose rounds replace every resource with
// a new value remembers a bounded number of encodings (rounds that add to
// what it remembers alternate with rounds that record anew), and rounds
// that add do happen.
func TestEncoderForgets(t *testing.T) {
	const n = 2000
	var enc Encoder
	var prev map[resourcev3.Type]Set
	adding := 0
	for round := range 200 {
		items := make([]types.Resource, n)
		for i := range items {
			name := fmt.Sprintf("svc%04d", i)
			if i < 50 || round%40 == 0 { // a few change each round; sometimes all
				items[i] = &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{Priority: uint32(round)}}}
			} else {
				items[i] = prev[resourcev3.EndpointType].items.At(i)
			}
		}
		r := enc.Begin()
		if r.c.adding {
			adding++
		}
		got, err := r.Shared(ListsOf(Resources{resourcev3.EndpointType: items}), prev)
		if err != nil {
			t.Fatal(err)
		}
		r.End()
		if len(enc.last) > 3*n+1024 {
			t.Fatalf("round %d: %d encodings remembered for %d resources", round, len(enc.last), n)
		}
		prev = got
	}
	if adding < 150 {
		t.Fatalf("only %d of 200 rounds added to what the Encoder remembers", adding)
	}
}

// TestEncoderForgetsReplaced: rounds that patch sets (an endpoint change)
// forget the values they replaced: the Encoder remembers exactly what the
// sets hold and never needs a round that records every resource anew.
func TestEncoderForgetsReplaced(t *testing.T) {
	const n = 2000
	var enc Encoder
	var prev map[resourcev3.Type]Set
	for round := range 200 {
		items := make([]types.Resource, n)
		for i := range items {
			name := fmt.Sprintf("svc%04d", i)
			if round == 0 || (i+round)%97 == 0 {
				items[i] = &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{Priority: uint32(round)}}}
			} else {
				items[i] = prev[resourcev3.EndpointType].items.At(i)
			}
		}
		r := enc.Begin()
		if round > 0 && !r.c.adding {
			t.Fatalf("round %d recorded every resource anew", round)
		}
		got, err := r.Shared(ListsOf(Resources{resourcev3.EndpointType: items}), prev)
		if err != nil {
			t.Fatal(err)
		}
		r.End()
		if len(enc.last) != n {
			t.Fatalf("round %d: %d encodings remembered for %d resources", round, len(enc.last), n)
		}
		prev = got
	}
}

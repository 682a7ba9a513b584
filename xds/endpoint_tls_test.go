package xds_test

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/model"
	"github.com/meshd/meshd/xds/resource"
	"github.com/meshd/meshd/xds/translate"
)

// TestEndpointTransportSocket runs the real Envoy through the translator's
// outbound cluster and endpoints: an endpoint with a sidecar is reached over
// mutual TLS (the sidecar's certificate checked upstream), one without over
// plaintext, whether the mark that selects mutual TLS is on the endpoints'
// locality (all of them in the mesh) or on each endpoint (some of them).
func TestEndpointTransportSocket(t *testing.T) {
	pki := newTestPKI(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m := startMeshd(t, pki, addr)
	t.Cleanup(func() { m.stop(t) })
	envoy := startSidecar(t, pki, addr, bootstrap.Delta)

	meshA := newUpstream(t, pki)
	meshB := newUpstream(t, pki)
	plain := newUpstream(t, pki)
	lport := freePort(t)
	web := webID.String()
	for _, tc := range []struct {
		name      string
		endpoints map[*upstream]string // upstream -> identity ("" outside the mesh)
		locality  bool                 // the mark is on the locality
	}{
		{"all in the mesh", map[*upstream]string{meshA: web, meshB: web}, true},
		{"some in the mesh", map[*upstream]string{meshA: web, plain: ""}, false},
		{"none in the mesh", map[*upstream]string{plain: ""}, false},
		{"all in the mesh again", map[*upstream]string{meshB: web}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := &model.Service{Namespace: "demo", Name: "web", ClusterIP: "198.19.0.10",
				Ports: []model.Port{{Name: "tcp", Port: 80, Protocol: model.ProtocolTCP}}}
			for u, id := range tc.endpoints {
				svc.Endpoints = append(svc.Endpoints, model.Endpoint{PortName: "tcp", Address: "127.0.0.1", Port: u.port, Ready: true, Identity: id})
			}
			slices.SortFunc(svc.Endpoints, func(a, b model.Endpoint) int { return cmp.Compare(a.Port, b.Port) })
			res := outboundOf(t, svc, lport)
			cla := res[resourcev3.EndpointType][0].(*endpointv3.ClusterLoadAssignment)
			if got := cla.GetEndpoints()[0].GetMetadata() != nil; got != tc.locality {
				t.Fatalf("locality carries the mark = %v, want %v:\n%v", got, tc.locality, cla)
			}
			if err := setShared(context.Background(), m.pub, res); err != nil {
				t.Fatal(err)
			}
			// A cluster that gains or loses its mutual TLS match is a new
			// cluster, warming while the old one serves (and may take the
			// new endpoints first): connections are counted once the new
			// one is active.
			want := false
			for _, id := range tc.endpoints {
				want = want || id != ""
			}
			eventually(t, "the cluster active", func() error {
				active, err := envoy.Admin(context.Background(), "/config_dump?resource=dynamic_active_clusters")
				if err != nil {
					return err
				}
				warming, err := envoy.Admin(context.Background(), "/config_dump?resource=dynamic_warming_clusters")
				if err != nil {
					return err
				}
				if got := strings.Contains(string(active), "transport_socket_matches"); got != want || strings.Contains(string(warming), "outbound|") {
					return fmt.Errorf("active cluster with the mutual TLS match: %v, want %v; warming: %s", got, want, warming)
				}
				return nil
			})
			for _, u := range []*upstream{meshA, meshB, plain} {
				u.reset()
			}
			// Connections through the sidecar until each endpoint has had
			// one (round robin), then what each upstream saw.
			eventually(t, "every endpoint reached", func() error {
				c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", lport), time.Second)
				if err != nil {
					return err
				}
				defer c.Close()
				_, _ = c.Write([]byte("ping\n"))
				_ = c.SetReadDeadline(time.Now().Add(time.Second))
				_, _ = bufio.NewReader(c).ReadString('\n')
				for u := range tc.endpoints {
					if len(u.seen()) == 0 {
						return fmt.Errorf("upstream :%d not reached yet", u.port)
					}
				}
				return nil
			})
			for u, id := range tc.endpoints {
				want := "plaintext"
				if id != "" {
					want = "mTLS from " + web
				}
				for _, got := range u.seen() {
					if got != want {
						t.Errorf("upstream :%d (identity %q) saw %s, want %s", u.port, id, got, want)
					}
				}
			}
		})
	}
}

// outboundOf is the translator's cluster and endpoints for svc's port,
// behind a plain TCP listener on lport.
func outboundOf(t *testing.T, svc *model.Service, lport int) resource.Resources {
	t.Helper()
	shared, problems := translate.Shared(&model.Snapshot{TrustDomain: "cluster.local", Services: vec.Of([]*model.Service{svc})})
	if len(problems) > 0 {
		t.Fatalf("problems: %v", problems)
	}
	name := translate.ClusterName(svc, 80)
	out := resource.Resources{}
	for _, r := range shared[resourcev3.ClusterType] {
		if c := r.(*clusterv3.Cluster); c.GetName() == name {
			out[resourcev3.ClusterType] = []types.Resource{c}
		}
	}
	for _, r := range shared[resourcev3.EndpointType] {
		if c := r.(*endpointv3.ClusterLoadAssignment); c.GetClusterName() == name {
			out[resourcev3.EndpointType] = []types.Resource{c}
		}
	}
	if len(out) != 2 {
		t.Fatalf("no cluster and endpoints named %s in %v", name, shared)
	}
	out[resourcev3.ListenerType] = []types.Resource{&listenerv3.Listener{
		Name: "to-web",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(lport)}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.tcp_proxy",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &tcpv3.TcpProxy{
				StatPrefix: "to-web", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: name}})}}}}},
	}}
	return out
}

// upstream is an endpoint that tells a TLS client hello from plaintext and
// completes mutual TLS as web, noting the client's identity.
type upstream struct {
	port uint32
	mu   sync.Mutex
	got  []string
}

func newUpstream(t *testing.T, pki *testPKI) *upstream {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	cfg := &tls.Config{Certificates: []tls.Certificate{pki.tlsCert(pki.issue(webID, "web"))},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pki.pool(), MinVersion: tls.VersionTLS13}
	u := &upstream{port: uint32(lis.Addr().(*net.TCPAddr).Port)}
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go u.serve(c, cfg)
		}
	}()
	return u
}

func (u *upstream) serve(c net.Conn, cfg *tls.Config) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	first, err := r.Peek(1)
	if err != nil {
		return
	}
	if first[0] != 0x16 { // not a TLS handshake record
		u.note("plaintext")
		_, _ = c.Write([]byte("pong\n"))
		return
	}
	tc := tls.Server(&peekedConn{Conn: c, r: r}, cfg)
	if err := tc.Handshake(); err != nil {
		u.note("failed TLS: " + err.Error())
		return
	}
	var id string
	if uris := tc.ConnectionState().PeerCertificates[0].URIs; len(uris) == 1 {
		id = uris[0].String()
	}
	u.note("mTLS from " + id)
	_, _ = tc.Write([]byte("pong\n"))
}

func (u *upstream) note(s string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.got = append(u.got, s)
}

func (u *upstream) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.got...)
}

func (u *upstream) reset() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.got = nil
}

// peekedConn reads through the buffered reader that peeked at the start.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }

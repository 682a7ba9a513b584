package xds_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
	"github.com/meshd/meshd/xds/publish"
	"github.com/meshd/meshd/xds/resource"
)

var (
	meshdID = ca.Identity{TrustDomain: "cluster.local", Namespace: "meshd-system", ServiceAccount: "meshd"}
	webID   = ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "web"}
	webNode = xds.NodeID("demo", "web-0")
)

// meshd is a control plane assembled the way cmd/meshd assembles it: ADS
// server with TLS, publisher, SDS manager and the hooks between them.
type meshd struct {
	srv     *xds.Server
	pub     *publish.Publisher
	mesh    *xds.Mesh // gives proxies their own resources (startWithMesh only)
	renewer *testRenewer
	cancel  context.CancelFunc
	done    chan error
}

// setShared publishes hand-made shared resources without a model (nor a
// change time: no convergence is measured).
func setShared(ctx context.Context, pub *publish.Publisher, res resource.Resources) error {
	return pub.SetAll(ctx, time.Time{}, res, nil)
}

// serveMeshd starts a meshd with a fresh PKI on a free port, stopped when
// the test ends.
func serveMeshd(t *testing.T, opts ...func(*xds.Config)) (*testPKI, string, *meshd) {
	t.Helper()
	pki := newTestPKI(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m := startMeshd(t, pki, addr, opts...)
	t.Cleanup(func() { m.stop(t) })
	return pki, addr, m
}

// startMeshd starts a meshd serving an empty mesh config (no services).
func startMeshd(t testing.TB, pki *testPKI, addr string, opts ...func(*xds.Config)) *meshd {
	t.Helper()
	m := startUnpublished(t, pki, addr, opts...)
	if err := setShared(context.Background(), m.pub, resource.Resources{}); err != nil {
		t.Fatal(err)
	}
	return m
}

// startUnpublished starts a meshd that has not published a mesh config yet,
// as one restarting and still reading the cluster.
func startUnpublished(t testing.TB, pki *testPKI, addr string, opts ...func(*xds.Config)) *meshd {
	t.Helper()
	return start(t, pki, addr, false, opts...)
}

// startWithMesh starts a meshd whose proxies get their resources from a
// Mesh (m.mesh), as meshd serve does; nothing is published before the first
// m.mesh.Update.
func startWithMesh(t testing.TB, pki *testPKI, addr string) *meshd {
	t.Helper()
	return start(t, pki, addr, true)
}

func start(t testing.TB, pki *testPKI, addr string, withMesh bool, opts ...func(*xds.Config)) *meshd {
	t.Helper()
	serving := pki.tlsCert(pki.issue(meshdID, "meshd", net.ParseIP("127.0.0.1")))
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{serving}, ClientCAs: pki.pool(),
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}
	m := &meshd{renewer: newTestRenewer(t, pki), done: make(chan error, 1)}
	logger := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	if _, ok := t.(*testing.B); ok {
		logger = slog.New(slog.DiscardHandler)
	}
	var pub *publish.Publisher
	mgr, err := sds.New(sds.Config{Renewer: m.renewer, Logger: logger, OnSecrets: func(node string, secrets []*tlsv3.Secret) {
		res := resource.Resources{resourcev3.SecretType: make([]types.Resource, 0, len(secrets))}
		for _, s := range secrets {
			res[resourcev3.SecretType] = append(res[resourcev3.SecretType], s)
		}
		if err := pub.SetProxy(context.Background(), node, res); err != nil {
			t.Errorf("publish secrets: %v", err)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	var hooks xds.ProxyHooks
	cfg := xds.Config{Addr: addr, TLS: tlsCfg, Hooks: &hooks, Logger: logger}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := xds.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pub = publish.New(srv.Cache)
	hooks.Secrets, hooks.Publisher = mgr, pub
	if withMesh {
		m.mesh = xds.NewMesh(pub, logger)
		hooks.Mesh = m.mesh
	}
	m.srv, m.pub = srv, pub
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() { m.done <- srv.Start(ctx) }()
	return m
}

func (m *meshd) stop(t testing.TB) {
	m.cancel()
	if err := <-m.done; err != nil {
		t.Errorf("meshd: %v", err)
	}
}

// startSidecar writes the sidecar's credentials and bootstrap (as the
// injector would, opts changing its configuration) and starts the real
// Envoy with them.
func startSidecar(t *testing.T, pki *testPKI, xdsAddr string, api bootstrap.APIType, opts ...func(*bootstrap.Config)) *testenv.Envoy {
	t.Helper()
	dir := t.TempDir()
	client := pki.issue(webID, webNode)
	files, err := bootstrap.SDSFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	files[bootstrap.FileCertChain], files[bootstrap.FileKey], files[bootstrap.FileRootCert] = client.ChainPEM, client.KeyPEM, pki.rootPEM
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	adminPort := freePort(t)
	cfg := bootstrap.Config{Namespace: "demo", Pod: "web-0", ServiceAccount: "web", XDSAddress: xdsAddr,
		XDSServerSAN: meshdID.String(), CredsDir: dir, API: api, AdminPort: uint32(adminPort)}
	for _, o := range opts {
		o(&cfg)
	}
	b, err := bootstrap.Render(cfg)
	if err != nil {
		t.Fatal(err)
	}
	y, err := bootstrap.YAML(b)
	if err != nil {
		t.Fatal(err)
	}
	return testenv.StartEnvoy(t, testenv.EnvoyOptions{Bootstrap: string(y), AdminPort: adminPort})
}

// inboundListener is a listener on port that requires a mesh client
// certificate, takes "default"/"ROOTCA" over ADS, and answers "hello".
func inboundListener(t *testing.T, port int) *listenerv3.Listener {
	t.Helper()
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	tlsCtx := mustAny(t, &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: sds.NameDefault, SdsConfig: ads}},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: sds.NameRootCA, SdsConfig: ads}},
		},
	})
	hcm := mustAny(t, &hcmv3.HttpConnectionManager{
		StatPrefix: "inbound",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			VirtualHosts: []*routev3.VirtualHost{{Name: "all", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200,
					Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "hello"}}}},
			}}}}}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}}},
	})
	return &listenerv3.Listener{
		Name: "inbound",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}},
		FilterChains: []*listenerv3.FilterChain{{
			TransportSocket: &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tlsCtx}},
			Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}},
		}},
	}
}

// meshClient dials the sidecar's inbound listener as a mesh workload would and
// checks that the server presents want's SPIFFE ID.
func meshClient(t *testing.T, pki *testPKI, port int, want ca.Identity) (*tls.Conn, error) {
	clientCert := pki.tlsCert(pki.issue(ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}, "client"))
	cfg := &tls.Config{Certificates: []tls.Certificate{clientCert}, RootCAs: pki.pool(), MinVersion: tls.VersionTLS12,
		InsecureSkipVerify: true, // SPIFFE: no DNS names; the chain and URI SAN are checked below
		VerifyConnection: func(cs tls.ConnectionState) error {
			opts := x509.VerifyOptions{Roots: pki.pool(), Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
			if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
				return err
			}
			if got := cs.PeerCertificates[0].URIs; len(got) != 1 || got[0].String() != want.String() {
				return fmt.Errorf("server SPIFFE ID %v, want %s", got, want)
			}
			return nil
		}}
	return tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", port), cfg)
}

// get sends one HTTP/1.1 request on conn and returns the response text.
func get(conn *tls.Conn) (string, error) {
	if err := conn.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
		return "", err
	}
	if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: web\r\n\r\n")); err != nil {
		return "", err
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	return string(buf[:n]), err
}

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

package e2e_test

import (
	"context"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/certmanager"
	"github.com/meshd/meshd/internal/e2e"
	"github.com/meshd/meshd/internal/testenv"
)

// meshdBin is built once by TestMain.
var meshdBin string

func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "grpc-helper" {
		os.Exit(grpcHelper(os.Args[2:]))
	}
	dir, err := os.MkdirTemp("", "meshd-e2e-bin-")
	if err != nil {
		panic(err)
	}
	meshdBin = filepath.Join(dir, "meshd")
	code := 1
	if out, err := exec.Command("go", "build", "-o", meshdBin, "github.com/meshd/meshd/cmd/meshd").CombinedOutput(); err != nil {
		println("e2e: build meshd:", err.Error(), string(out))
	} else {
		code = testenv.Main(m)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func options(t *testing.T, mesh bool) e2e.Options {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, os.ErrPermission)
	}
	for _, tool := range []string{"nginx", "curl", "tcpdump", "iptables", "setpriv", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Unavailable(t, err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return e2e.Options{Meshd: meshdBin, Envoy: testenv.Need(t, "envoy"), Mesh: mesh, Duration: 3 * time.Second, Progress: testWriter{t}, GRPCHelper: self}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// logsOnFailure logs meshd's and the sidecars' logs at the end of a test
// that failed.
func logsOnFailure(t *testing.T, meshd string, envoys map[string]string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		t.Logf("meshd log:\n%s", meshd)
		for name, l := range envoys {
			t.Logf("envoy %s log:\n%s", name, l)
		}
	})
}

func run(t *testing.T, opts e2e.Options) *e2e.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opts.Duration+3*time.Minute)
	defer cancel()
	res, err := e2e.Run(ctx, opts)
	if res != nil {
		logsOnFailure(t, res.MeshdLog, res.EnvoyLogs)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("result: %d requests, %d failed %v; plaintext seen %v, headers seen %v, %d ClientHellos, %d packets, peers %v, server serials %v, trusted roots over time %v",
		res.Requests, res.Failures, res.FirstFailures, res.PlaintextSeen, res.HeadersSeen, res.ClientHellos, res.Packets, res.PeerIdentities, res.ServerSerials, res.RootSets)
	return res
}

// TestWithoutMesh: the eavesdropper on the bridge reads nginx's page and
// headers in clear. This proves the capture sees the traffic.
func TestWithoutMesh(t *testing.T) {
	res := run(t, options(t, false))
	if res.Requests == 0 || res.Failures > 0 || !res.BodyHasMarker {
		t.Fatalf("plain traffic did not work: %d requests, %d failed %v", res.Requests, res.Failures, res.FirstFailures)
	}
	if !res.PlaintextSeen || !res.HeadersSeen {
		t.Errorf("the capture does not hold the page (%v) or the headers (%v) in clear", res.PlaintextSeen, res.HeadersSeen)
	}
}

// TestStrictMTLS: with meshd, the same app traffic (plain http://<service>)
// still succeeds, the capture holds none of it in clear but TLS handshakes,
// and the server's sidecar authenticated the client's SPIFFE ID.
func TestStrictMTLS(t *testing.T) {
	for _, api := range []string{"delta", "sotw"} {
		t.Run(api, func(t *testing.T) {
			opts := options(t, true)
			opts.API = api
			res := run(t, opts)
			checkMesh(t, res)
		})
	}
}

// TestStrictMTLSThroughKubernetes: the same experiment through the real
// kube-apiserver: meshd watches it, the pods are created through meshd's
// injection webhook (sidecar, init container, credentials Secret), the
// controller-manager writes the EndpointSlice, and the harness plays kubelet
// with what the webhook injected. meshd is killed (SIGKILL) a third into
// the traffic and restarted: no request fails, and the sidecars reconnect
// and sync again from what meshd rebuilds out of the apiserver, over delta
// and state-of-the-world ADS.
func TestStrictMTLSThroughKubernetes(t *testing.T) {
	env := testenv.Kube(t)
	env.StartControllerManager(t)
	for _, api := range []string{"delta", "sotw"} {
		t.Run(api, func(t *testing.T) {
			opts := options(t, true)
			opts.Kube = &e2e.Kube{Kubeconfig: env.Kubeconfig, Client: env.Client, NodeName: testenv.NodeName}
			opts.API, opts.Duration, opts.KillMeshd = api, 9*time.Second, true
			res := run(t, opts)
			checkMesh(t, res)
			if !res.Reconnected {
				t.Error("the sidecars did not reconnect and sync after the restart")
			}
			// The reconnections crossed the bridge: TLS 1.3 to meshd too
			// (checkMesh checked every handshake).
			if n := res.Wire.ServerPorts[15012]; n < 2 {
				t.Errorf("%d handshakes to meshd's xDS port seen after its restart, want one per sidecar", n)
			}
		})
	}
}

// TestCertManagerUnderTraffic: scenarios 2 and 3 with workload
// certificates from the real cert-manager (a CA Issuer): the capture holds
// no plaintext, the server sidecar sees the client's SPIFFE ID, 1-minute
// certificates are renewed through CertificateRequests under traffic, the
// sidecars trust exactly cert-manager's CA. Then cert-manager stops: no
// request fails (the current certificates keep working), the next renewal
// fails with a Warning Event on the pod saying why, and no
// CertificateRequest is left behind.
func TestCertManagerUnderTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("75 s of traffic; not in -short")
	}
	opts := options(t, true)
	env := testenv.Kube(t)
	env.StartControllerManager(t)
	cm := env.CertManagerCAIssuer(t, "meshd-system", "mesh-ca")
	opts.Kube = &e2e.Kube{Kubeconfig: env.Kubeconfig, Client: env.Client, NodeName: testenv.NodeName,
		Args: []string{"--issuer-ref", "Issuer/mesh-ca", "--issuer-timeout", "3s"}}
	// Certificates live 1m and renew at 27-33 s of their life: the first
	// renewal goes through cert-manager, cert-manager stops 38 s into the
	// traffic, the next renewal (54-66 s after the first certificate) fails
	// within the end of traffic; the renewed certificate outlives it.
	opts.CertTTL, opts.Duration = time.Minute, 75*time.Second
	opts.Fault, opts.FaultAfter = env.StopCertManager, 38*time.Second
	t.Cleanup(func() { env.StartCertManager(t) })
	res := run(t, opts)
	checkMesh(t, res)
	if len(res.ServerSerials) != 2 {
		t.Errorf("the server sidecar showed serials %v; want 2 (one renewal through cert-manager, then none while it is down)", res.ServerSerials)
	}
	ctx := context.Background()
	sec, err := env.Client.CoreV1().Secrets("meshd-system").Get(ctx, "mesh-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	caCerts, err := ca.ParseCertsPEM(sec.Data["tls.crt"])
	if err != nil {
		t.Fatal(err)
	}
	want := caCerts[0].SerialNumber
	if got, ok := new(big.Int).SetString(strings.Join(res.RootSets, "+"), 16); !ok || got.Cmp(want) != 0 {
		t.Errorf("the server sidecar trusted %v; want only cert-manager's CA %s", res.RootSets, want.Text(16))
	}
	evs, err := env.Client.CoreV1().Events(res.Namespace).List(ctx, metav1.ListOptions{FieldSelector: "reason=CertificateIssueFailed"})
	if err != nil || len(evs.Items) == 0 {
		t.Errorf("no CertificateIssueFailed Event in %s while cert-manager was down (%v)", res.Namespace, err)
	} else {
		t.Logf("Event on %s/%s: %s", evs.Items[0].InvolvedObject.Kind, evs.Items[0].InvolvedObject.Name, evs.Items[0].Message)
	}
	left, err := cm.CertmanagerV1().CertificateRequests("meshd-system").List(ctx, metav1.ListOptions{LabelSelector: certmanager.LabelManaged})
	if err != nil || len(left.Items) != 0 {
		t.Errorf("%d CertificateRequests left (%v)", len(left.Items), err)
	}
}

func checkMesh(t *testing.T, res *e2e.Result) {
	t.Helper()
	if res.Requests == 0 || res.Failures > 0 || !res.BodyHasMarker {
		t.Errorf("requests through the mesh: %d, %d failed %v, page received %v", res.Requests, res.Failures, res.FirstFailures, res.BodyHasMarker)
	}
	if res.PlaintextSeen || res.HeadersSeen {
		t.Errorf("the capture holds the page (%v) or nginx's headers (%v) in clear", res.PlaintextSeen, res.HeadersSeen)
	}
	if res.ClientHellos == 0 || res.Packets == 0 {
		t.Errorf("the capture holds %d packets between the pods and %d TLS ClientHellos; want both > 0", res.Packets, res.ClientHellos)
	}
	// The eavesdropper's own reading of the handshakes (sidecar to sidecar
	// and sidecar to meshd): TLS 1.3 only, no certificate or SPIFFE ID in
	// clear.
	t.Logf("eavesdropper: %s", res.Wire)
	if !res.Wire.OnlyTLS13() {
		t.Errorf("on the wire: %s; want only TLS 1.3 and nothing identifying in clear", res.Wire)
	}
	if want := "spiffe://cluster.local/ns/" + res.Namespace + "/sa/client"; !slices.Equal(res.PeerIdentities, []string{want}) {
		t.Errorf("the server sidecar saw peers %v, want only %s", res.PeerIdentities, want)
	}
}

// TestRotationUnderTraffic: with 1-minute certificates, several renewals
// happen during continuous requests, and a root rotation is asked for
// (meshd ca rotate-root) and walked through (bundle, signing, done) while
// the harness, as the kubelet, refreshes the sidecars' xDS credentials.
// No request fails; the server sidecar shows each new serial, and its
// trusted roots go old -> old+new -> new (the bundle first).
func TestRotationUnderTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("2 minutes of traffic; not in -short")
	}
	opts := options(t, true)
	opts.CertTTL = time.Minute
	opts.Duration = 120 * time.Second
	opts.RotateRoot, opts.RotateAfter, opts.RootGrace = true, 10*time.Second, 10*time.Second
	res := run(t, opts)
	checkMesh(t, res)
	// Renewal at half the lifetime (±10%): about every 30 s, plus one
	// re-issue per rotation phase (3). More would be a renewal loop.
	maxSerials := 1 + int(opts.Duration/(27*time.Second)) + 3
	if n := len(res.ServerSerials); n < 3 || n > maxSerials {
		t.Errorf("the server sidecar showed %d serials %v; want the first and 2 to %d more", n, res.ServerSerials, maxSerials-1)
	}
	sets := res.RootSets
	if len(sets) != 3 || strings.Contains(sets[0], ",") || strings.Count(sets[1], ",") != 1 || strings.Contains(sets[2], ",") ||
		sets[0] == sets[2] || !strings.Contains(sets[1], sets[0]) || !strings.Contains(sets[1], sets[2]) {
		t.Errorf("trusted roots over time %v; want old, old+new, new", sets)
	}
	if res.CredentialRefreshes < 2 {
		t.Errorf("xDS credentials refreshed %d times; want one per CA change (at least 2)", res.CredentialRefreshes)
	}
}

// TestMeshdRestartUnderTraffic: meshd is killed (SIGKILL) under traffic and
// restarted: no request fails, and both sidecars reconnect and sync again,
// over delta and state-of-the-world ADS.
func TestMeshdRestartUnderTraffic(t *testing.T) {
	for _, api := range []string{"delta", "sotw"} {
		t.Run(api, func(t *testing.T) {
			opts := options(t, true)
			opts.API, opts.KillMeshd, opts.Duration = api, true, 9*time.Second
			res := run(t, opts)
			checkMesh(t, res)
			if !res.Reconnected {
				t.Error("the sidecars did not reconnect and sync after the restart")
			}
			// The reconnections crossed the bridge: TLS 1.3 to meshd too
			// (checkMesh checked every handshake).
			if n := res.Wire.ServerPorts[15012]; n < 2 {
				t.Errorf("%d handshakes to meshd's xDS port seen after its restart, want one per sidecar", n)
			}
		})
	}
}

// TestReplicaKilledUnderTraffic: two meshd replicas; the one holding the
// streams is killed; the sidecars reconnect to the other and sync again,
// and no request fails.
func TestReplicaKilledUnderTraffic(t *testing.T) {
	opts := options(t, true)
	opts.Replicas, opts.KillMeshd, opts.Duration = 2, true, 9*time.Second
	res := run(t, opts)
	checkMesh(t, res)
	if !res.Reconnected {
		t.Error("the sidecars did not fail over to the other replica")
	}
}

// TestIdentityEnforcement: a pod outside the mesh reaching web-0 directly
// is refused when web-0 is STRICT and served when it is PERMISSIVE; an
// impostor in the mesh (another service account) whose address is listed
// as web-0's never gets a request: the client's sidecar checks the server's
// SPIFFE ID and refuses it (SAN mismatch) and retries the request on the
// real web-0 (a refused handshake is a connect failure: the request never
// left the client's sidecar), so every request succeeds.
func TestIdentityEnforcement(t *testing.T) {
	for _, mode := range []string{"STRICT", "PERMISSIVE"} {
		t.Run(mode, func(t *testing.T) {
			opts := options(t, true)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			res, err := e2e.RunIdentity(ctx, opts, mode)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", *res)
			if wantOK := mode == "PERMISSIVE"; res.LegacyOK != wantOK {
				t.Errorf("%s: a pod outside the mesh got through = %v (%s), want %v", mode, res.LegacyOK, res.LegacyError, wantOK)
			}
			if res.ImpostorServed != 0 {
				t.Errorf("the impostor's app served %d requests", res.ImpostorServed)
			}
			if res.SANFailures == 0 {
				t.Errorf("no refused handshake with the impostor: %d SAN failures", res.SANFailures)
			}
			if res.Failures != 0 {
				t.Errorf("%d of %d requests failed; each refused one should have been retried on the real web-0", res.Failures, res.Requests)
			}
		})
	}
}

// TestReducedDemo is the experiment as `make demo` runs it without root:
// two loopback pods whose sidecars have no interception
// (meshd.io/interception: none). Requests through the client's sidecar all
// succeed; the app behind the server sidecar sees the client's SPIFFE ID;
// plaintext and certificate-less TLS to the server sidecar are refused.
// Needs no root (it runs as root too). Renewal under traffic is scenario 3's.
func TestReducedDemo(t *testing.T) {
	opts := e2e.Options{Meshd: meshdBin, Envoy: testenv.Need(t, "envoy"), Duration: 8 * time.Second, Operator: true, Progress: testWriter{t}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := e2e.RunLocal(ctx, opts)
	if res != nil {
		logsOnFailure(t, res.MeshdLog, res.EnvoyLogs)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("result: %+v", *res)
	client := "spiffe://cluster.local/ns/demo/sa/client"
	if res.Requests == 0 || res.Failures != 0 || !res.BodyHasMarker {
		t.Errorf("%d requests, %d failed %v, page received %v; want all through", res.Requests, res.Failures, res.FirstFailures, res.BodyHasMarker)
	}
	if !slices.Equal(res.AppSawPeers, []string{client}) || !slices.Equal(res.SidecarPeers, []string{client}) {
		t.Errorf("the app saw peers %v, the server sidecar logged %v; want %s", res.AppSawPeers, res.SidecarPeers, client)
	}
	if !res.PlaintextRefused || !res.NoCertRefused || res.ServerIdentity != "spiffe://cluster.local/ns/demo/sa/web" {
		t.Errorf("server sidecar: plaintext refused %v, no-certificate TLS refused %v, identity %q", res.PlaintextRefused, res.NoCertRefused, res.ServerIdentity)
	}
	if len(res.ServerSerials) != 1 {
		t.Errorf("server certificate serials %v: want its one workload certificate", res.ServerSerials)
	}
}

// TestWorkloads: an app other than nginx (apps.py) behind a sidecar, in
// both modes, called by a meshed client and by a pod outside the mesh:
//   - the app sees mesh callers come from 127.0.0.6, not 127.0.0.1;
//   - a WebSocket opens through the mesh (and, PERMISSIVE, from the
//     outsider) and carries messages both ways; an HTTP/1.0 request is
//     answered (Envoy refuses both unless configured to take them);
//   - the app calling its own service (itself the one endpoint) is served
//     through its own sidecar's inbound listener;
//   - on a PERMISSIVE pod the outsider reaches a port no Service or
//     container declares (on a STRICT one it is refused);
//   - the sidecar's own listeners, reached at the pod's address without
//     redirection, close such connections instead of passing them on to
//     themselves (which looped until the sidecar gave out);
//   - a port the pod's meshd.io/exclude-inbound-ports names is reached
//     directly, in plaintext, by the outsider and by the meshed client
//     (whose sidecar knows not to use mutual TLS there);
//   - a 3 MiB upload (Expect: 100-continue, more than Envoy buffers for a
//     retry) reaches the app whole;
//   - a TCP client that half-closes gets the answer its server sends after
//     the EOF, across the mutual TLS hop;
//   - a gRPC app (port named grpc: HTTP/2 between the sidecars) answers a
//     unary call and a server stream of the meshed client (and,
//     PERMISSIVE, of the outsider);
//   - its port bound only to 127.0.0.1 stays unreachable from outside the
//     pod, for meshed callers and (PERMISSIVE) plaintext ones alike;
//   - its server-first port (appProtocol smtp) gives a silent meshed
//     client the banner over mutual TLS; a silent outsider gets it after
//     the pod's 1 s detection timeout on PERMISSIVE, and is closed (not
//     held for Envoy's 15 s) on STRICT;
//   - on STRICT the outsider's refused connections are in the server
//     sidecar's log with the reason;
//   - (STRICT, 1-minute certificates) a busy mutual TLS connection is
//     closed by the server side at a third of the certificate lifetime,
//     before the certificate it was made with expires.
func TestWorkloads(t *testing.T) {
	for _, mode := range []string{"STRICT", "PERMISSIVE"} {
		t.Run(mode, func(t *testing.T) {
			opts := options(t, true)
			var hold time.Duration
			if mode == "STRICT" {
				opts.CertTTL, hold = time.Minute, 50*time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			res, err := e2e.RunApps(ctx, opts, mode, hold)
			if err != nil {
				t.Fatal(err)
			}
			refused := res.RefusedLines()
			t.Logf("held connection: %s", res.Held)
			t.Logf("the sidecar's own ports from the outsider: 15001 %q, 15006 %q", res.SelfPorts[0], res.SelfPorts[1])
			for i, port := range []string{"15001", "15006"} {
				if !strings.Contains(res.SelfPorts[i], "closed=True") {
					t.Errorf("the outsider's connection to the sidecar's port %s at the pod's address: %s; want it closed at once (not passed on to itself)", port, res.SelfPorts[i])
				}
			}
			t.Logf("gRPC: meshed client %q, outsider %q; undeclared port, outsider %q; bypassed port, meshed client %q, outsider %q", res.GRPCFromClient, res.GRPCFromLegacy, res.UndeclaredFromLegacy, res.BypassFromClient, res.BypassFromLegacy)
			t.Logf("WebSocket: meshed client %q, outsider %q; HTTP/1.0 from the meshed client %q", res.WebSocketFromClient, res.WebSocketFromLegacy, res.HTTP10FromClient)
			if want := "status=101 accept=ok answer='echo hello from 127.0.0.6' answer='echo again from 127.0.0.6'"; res.WebSocketFromClient != want {
				t.Errorf("a WebSocket of the meshed client through the service: %q, want %q", res.WebSocketFromClient, want)
			}
			if want := "check=SERVING watch=SERVING"; res.GRPCFromClient != want {
				t.Errorf("a gRPC call and stream of the meshed client through the service: %q, want %q", res.GRPCFromClient, want)
			}
			// Each request crosses the mesh in the protocol its client
			// spoke, whatever the port's name or appProtocol says.
			t.Logf("gRPC on a port named http: %q; WebSocket on an h2c port: %q", res.GRPCOnHTTPPort, res.WebSocketOnH2C)
			if want := "check=SERVING watch=SERVING"; res.GRPCOnHTTPPort != want {
				t.Errorf("a gRPC call and stream of the meshed client through a service port named http-grpc: %q, want %q", res.GRPCOnHTTPPort, want)
			}
			if want := "status=101 accept=ok answer='echo hello from 127.0.0.6' answer='echo again from 127.0.0.6'"; res.WebSocketOnH2C != want {
				t.Errorf("a WebSocket of the meshed client through a service port of appProtocol kubernetes.io/h2c: %q, want %q", res.WebSocketOnH2C, want)
			}
			// The bypassed port is reached directly, in plaintext, by both:
			// the meshed client's sidecar sends no TLS there.
			for who, c := range map[string]struct{ got, from string }{"the meshed client": {res.BypassFromClient, res.ClientIP}, "the outsider": {res.BypassFromLegacy, res.LegacyIP}} {
				if !strings.Contains(c.got, "UNDECLARED hello from "+c.from) {
					t.Errorf("%s on the port meshd.io/exclude-inbound-ports bypasses: %s; want the app's answer to its own address %s", who, c.got, c.from)
				}
			}
			// sessionAffinity ClientIP: every request and connection of the
			// client reaches one server; without it, both serve.
			t.Logf("affinity: sticky HTTP %s TCP %s; spread HTTP %s TCP %s", res.StickyHTTP, res.StickyTCP, res.SpreadHTTP, res.SpreadTCP)
			for what, got := range map[string]string{"HTTP requests": res.StickyHTTP, "TCP connections": res.StickyTCP} {
				if got != "map[app-0:12]" && got != "map[app-1:12]" {
					t.Errorf("%s of the meshed client to a service with sessionAffinity ClientIP were answered by %s; want one server for all 12", what, got)
				}
			}
			// Services whose endpoints a client reaches depend on where it
			// is, and one whose pods are terminating: which server answers
			// each of 12 requests and 12 connections.
			for _, c := range []struct{ name, http, tcp, want, what string }{
				{"node-local", res.NodeLocalHTTP, res.NodeLocalTCP, "map[app-1:12]",
					"the meshed client (node n2) to a service with internalTrafficPolicy Local (app-1 is on n2)"},
				// trafficDistribution PreferClose: the endpoint hinted for the
				// client's zone (app-0, zone-a; the client's own node n2 has
				// app-1).
				{"zonal", res.ZonalHTTP, res.ZonalTCP, "map[app-0:12]",
					"the meshed client (zone-a) to a service whose endpoints are hinted for their zones (app-0 for zone-a)"},
				// No ready endpoint: the one terminating but still serving
				// takes the calls, as kube-proxy sends them (a rolling update
				// of a single pod).
				{"draining", res.DrainingHTTP, res.DrainingTCP, "map[app-0:12]",
					"the meshed client to a service whose only serving endpoint is terminating (app-0)"},
				// PreferSameNode: the node's hint first (app-1, on n2 with
				// the client), not the zone's.
				{"same node", res.SameNodeHTTP, res.SameNodeTCP, "map[app-1:12]",
					"the meshed client (node n2, zone-a) to a service whose endpoints are hinted for their nodes and zones (app-1 for n2)"},
			} {
				t.Logf("%s: HTTP %s TCP %s", c.name, c.http, c.tcp)
				for kind, got := range map[string]string{"HTTP requests": c.http, "TCP connections": c.tcp} {
					if got != c.want {
						t.Errorf("%s: %s of %s were answered by %s; want %s", c.name, kind, c.what, got, c.want)
					}
				}
			}
			for what, got := range map[string]string{"HTTP requests": res.SpreadHTTP, "TCP connections": res.SpreadTCP} {
				if !strings.Contains(got, "app-0:") || !strings.Contains(got, "app-1:") || strings.Contains(got, "no answer") {
					t.Errorf("%s of the meshed client to a service without affinity were answered by %s; want both servers", what, got)
				}
			}
			// A caller's x-envoy-* headers are not the sidecars' orders:
			// neither retries the 503 (a caller must not make the server's
			// sidecar send its app more than it asked).
			if want := "code=503 flaky=1"; res.EnvoyHeadersFromClient != want {
				t.Errorf("the meshed client asking for 3 retries of a 503 in x-envoy-* headers: %q, want %q", res.EnvoyHeadersFromClient, want)
			}
			wantOutsider := "code=503 flaky=1"
			if mode == "STRICT" {
				wantOutsider = "000 flaky=0" // refused, after curl's error
			}
			if !strings.HasSuffix(res.EnvoyHeadersFromLegacy, wantOutsider) {
				t.Errorf("the outsider asking for 3 retries of a 503 in x-envoy-* headers: %q, want %q", res.EnvoyHeadersFromLegacy, wantOutsider)
			}
			// Outbound traffic registry-only (app-1): a destination outside
			// the mesh is refused by its sidecar, a service of the mesh
			// reached; the meshed client (allow-any) reaches both.
			t.Logf("outside the mesh: from the meshed client %q, from registry-only app-1 %q; the service from app-1 %q", res.OutsideFromClient, res.OutsideFromRegistryOnly, res.ServiceFromRegistryOnly)
			if want := "peer=" + res.ClientIP; res.OutsideFromClient != want {
				t.Errorf("the meshed client (allow-any) calling a server outside the mesh: %q, want %q", res.OutsideFromClient, want)
			}
			if strings.Contains(res.OutsideFromRegistryOnly, "peer=") || !strings.HasPrefix(res.OutsideFromRegistryOnly, "curl: (") {
				t.Errorf("app-1 (registry-only) calling a server outside the mesh: %q, want the connection refused by its sidecar (a curl error)", res.OutsideFromRegistryOnly)
			}
			if res.ServiceFromRegistryOnly != "peer=127.0.0.6" {
				t.Errorf("app-1 (registry-only) calling a service of the mesh: %q, want the app's answer", res.ServiceFromRegistryOnly)
			}
			if want := "request= response="; res.EnvoyHeaders != want {
				t.Errorf("x-envoy-* headers the app and the meshed client saw: %q, want %q (none)", res.EnvoyHeaders, want)
			}
			if !strings.HasPrefix(res.ServerHeader, "BaseHTTP/") {
				t.Errorf("the Server header the meshed client got: %q, want the app's own (BaseHTTP/...)", res.ServerHeader)
			}
			if want := fmt.Sprintf("posted=%d", 3<<20); res.Upload != want {
				t.Errorf("a 3 MiB POST of the meshed client through the service: %q, want %q", res.Upload, want)
			}
			if want := "GOT 16 bytes: request then EOF"; res.HalfClose != want {
				t.Errorf("a TCP client that half-closes, through the mesh: %q, want %q (the answer after its EOF)", res.HalfClose, want)
			}
			if res.SelfCall != "peer=127.0.0.6" {
				t.Errorf("app-0 calling its own service (itself the endpoint): %q, want the app's answer through its sidecar", res.SelfCall)
			}
			// curl writes an HTTP/1.0 answer's version as "1".
			if want := "peer=127.0.0.6\n code=200 version=1"; res.HTTP10FromClient != want {
				t.Errorf("an HTTP/1.0 request of the meshed client through the service: %q, want %q", res.HTTP10FromClient, want)
			}
			t.Logf("source %q; loopback app: from its pod %q, meshed client %q, outsider %q; banner: meshed client %q, outsider %q; outsider's HTTP %q; refused lines %q",
				res.SourceSeen, res.LoopbackFromPod, res.LoopbackFromClient, res.LoopbackFromLegacy, res.BannerFromClient, res.BannerFromLegacy, res.PlainFromLegacy, refused)
			if res.SourceSeen != "127.0.0.6" {
				t.Errorf("the app saw the meshed client's request come from %q, want 127.0.0.6", res.SourceSeen)
			}
			if !strings.Contains(res.LoopbackFromPod, "LOOPBACK-ONLY hello") {
				t.Fatalf("the loopback-only app does not answer in its own pod: %s", res.LoopbackFromPod)
			}
			for who, got := range map[string]string{"the meshed client": res.LoopbackFromClient, "the outsider": res.LoopbackFromLegacy} {
				if strings.Contains(got, "LOOPBACK-ONLY") {
					t.Errorf("%s reached the app that listens only on 127.0.0.1: %s", who, got)
				}
			}
			const banner = "220 meshd-banner ready"
			if !strings.Contains(res.BannerFromClient, banner) {
				t.Errorf("the meshed client did not get the server-first banner: %s", res.BannerFromClient)
			}
			if mode == "PERMISSIVE" {
				if !strings.Contains(res.BannerFromLegacy, banner) {
					t.Errorf("the outsider did not get the banner within 5 s on a PERMISSIVE pod: %s", res.BannerFromLegacy)
				}
				if res.PlainFromLegacy != "peer=127.0.0.6" {
					t.Errorf("the outsider's plaintext HTTP call: %q, want the app's answer", res.PlainFromLegacy)
				}
				if !strings.Contains(res.UndeclaredFromLegacy, "UNDECLARED hello from 127.0.0.6") {
					t.Errorf("the outsider's plaintext to a port no Service or container declares, on a PERMISSIVE pod: %s; want the app's answer", res.UndeclaredFromLegacy)
				}
				if want := "check=SERVING watch=SERVING"; res.GRPCFromLegacy != want {
					t.Errorf("the outsider's plaintext gRPC to a PERMISSIVE pod: %q, want %q", res.GRPCFromLegacy, want)
				}
				if want := "status=101 accept=ok answer='echo hello from 127.0.0.6' answer='echo again from 127.0.0.6'"; res.WebSocketFromLegacy != want {
					t.Errorf("the outsider's plaintext WebSocket to a PERMISSIVE pod: %q, want %q", res.WebSocketFromLegacy, want)
				}
				return
			}
			// The held connection's hop between the sidecars has TCP
			// keepalive at both ends (a peer gone without a word is
			// found, as the 1-hour idle cut, now gone, did).
			if !socketWithKeepalive(res.ClientSockets, ":2525") || !socketWithKeepalive(res.ServerSockets, ":15006") {
				t.Errorf("the sidecars' mutual TLS connection has no keepalive timer:\nclient pod:\n%s\nserver pod:\n%s", res.ClientSockets, res.ServerSockets)
			}
			// Closed by the server sidecar at 20 s (a third of 1 m), with
			// answers until then; not alive at 50 s, when the certificate
			// it was made with would be near its end.
			if !strings.HasPrefix(res.Held, "end=closed") || strings.Contains(res.Held, "answered=0") {
				t.Errorf("a busy mesh TCP connection: %s; want it closed by the server side before the certificate's end, after answers", res.Held)
			}
			if strings.Contains(res.BannerFromLegacy, banner) || !strings.Contains(res.BannerFromLegacy, "closed=True") {
				t.Errorf("the outsider's silent connection to the STRICT server-first port: %s; want closed without the banner within 5 s", res.BannerFromLegacy)
			}
			if strings.Contains(res.PlainFromLegacy, "peer=") {
				t.Errorf("the outsider's plaintext HTTP call was served on a STRICT pod: %s", res.PlainFromLegacy)
			}
			if strings.Contains(res.UndeclaredFromLegacy, "UNDECLARED") {
				t.Errorf("the outsider's plaintext to an undeclared port was served on a STRICT pod: %s", res.UndeclaredFromLegacy)
			}
			if strings.Contains(res.GRPCFromLegacy, "check=") {
				t.Errorf("the outsider's plaintext gRPC was served on a STRICT pod: %s", res.GRPCFromLegacy)
			}
			if strings.Contains(res.WebSocketFromLegacy, "answer=") {
				t.Errorf("the outsider's plaintext WebSocket was served on a STRICT pod: %s", res.WebSocketFromLegacy)
			}
			// The outsider's plaintext HTTP (no chain: NR, with the TLS
			// error) and its silent connection to the server-first port
			// (closed at the timeout) are in the server sidecar's log.
			var noChain, timedOut bool
			for _, l := range refused {
				from := strings.Contains(l, "from="+res.LegacyIP+":")
				noChain = noChain || from && strings.Contains(l, "port=8080") && strings.Contains(l, "flags=NR")
				timedOut = timedOut || from && strings.Contains(l, "port=2525") && strings.Contains(l, "timeout")
			}
			if !noChain || !timedOut {
				t.Errorf("refused connections logged: plaintext HTTP %v, silent server-first client %v; want both:\n%s", noChain, timedOut, res.ServerLog)
			}
		})
	}
}

// socketWithKeepalive reports whether ss -tno output has an established
// socket with addr (":2525": a local or peer address ending so) whose
// timer is keepalive.
func socketWithKeepalive(ss, addr string) bool {
	for _, l := range strings.Split(ss, "\n") {
		f := strings.Fields(l)
		if len(f) >= 4 && (strings.HasSuffix(f[2], addr) || strings.HasSuffix(f[3], addr)) && strings.Contains(l, "timer:(keepalive") {
			return true
		}
	}
	return false
}

// TestAuthorization: AuthorizationPolicies enforced by real sidecars on an
// HTTP port and a TCP port. An ALLOW policy lets client-0 in and keeps
// other-0 out (403 on HTTP, the connection closed on TCP); a DENY policy
// overrides it for client-0; as a dry run the same DENY policy refuses
// nothing but is logged and counted; a DENY policy in meshd's namespace
// (the root namespace) keeps other-0 out of web-0 in another namespace;
// adding and removing the policy under client-0's traffic fails none of
// its requests. The refusals are in the
// server sidecar's log with the caller and the rule, explain names the
// deciding rule, and the config_dump holds the RBAC filters.
func TestAuthorization(t *testing.T) {
	opts := options(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := e2e.RunAuthz(ctx, opts)
	if res != nil {
		logsOnFailure(t, res.MeshdLog, res.EnvoyLogs)
	}
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{ // phase caller port -> outcome
		"none client-0 http": "200", "none client-0 tcp": "200", "none other-0 http": "200", "none other-0 tcp": "200",
		"allow client-0 http": "200", "allow client-0 tcp": "200", "allow other-0 http": "403", "allow other-0 tcp": "closed",
		"deny-over-allow client-0 http": "403", "deny-over-allow client-0 tcp": "closed",
		"deny-over-allow other-0 http": "403", "deny-over-allow other-0 tcp": "closed",
		"dry-run-deny client-0 http": "200", "dry-run-deny client-0 tcp": "200", "dry-run-deny other-0 http": "403", "dry-run-deny other-0 tcp": "closed",
		"mesh-wide-deny client-0 http": "200", "mesh-wide-deny client-0 tcp": "200", "mesh-wide-deny other-0 http": "403", "mesh-wide-deny other-0 tcp": "closed",
	}
	for _, o := range res.Outcomes {
		key := o.Phase + " " + o.Caller + " " + o.Port
		if o.Got != want[key] {
			t.Errorf("%s: got %s, want %s", key, o.Got, want[key])
		}
		delete(want, key)
	}
	if len(want) > 0 {
		t.Errorf("not observed: %v", want)
	}
	t.Logf("under traffic: %d requests, %d failed %v; %d flips, convergence %v", res.Requests, res.Failures, res.FirstFailures, res.Flips, res.Convergence)
	if res.Requests == 0 || res.Failures != 0 || res.Flips != 6 {
		t.Errorf("adding and removing the policy under traffic: %d requests, %d failed %v, %d flips; want none failed over 6 flips", res.Requests, res.Failures, res.FirstFailures, res.Flips)
	}
	if res.PlaintextSeen {
		t.Error("tcpdump on the bridge saw the page or nginx's headers in clear")
	}
	if !res.RBACInConfigDump {
		t.Error("web-0's config_dump does not show the RBAC filters with the policies' rules")
	}
	logs := strings.Join(res.AuthzLog, "\n")
	t.Logf("authz log:\n%s\nstats: %v\nexplain:\n%s\n%s", logs, res.Stats, res.Explain["client-0"], res.Explain["other-0"])
	for _, w := range []string{
		"peer=spiffe://cluster.local/ns/demo/sa/other", "rbac_access_denied_matched_policy[none]", "policies=demo/web-callers",
		"peer=spiffe://cluster.local/ns/demo/sa/client", "rbac_access_denied_matched_policy[demo/no-client/rule-0]",
		"meshd_deny_dry_run_shadow_effective_policy_id\":\"demo/no-client/rule-0",
	} {
		if !strings.Contains(logs, w) {
			t.Errorf("the server sidecar's authz log lacks %q", w)
		}
	}
	for _, pattern := range []string{ // each counted at least once
		`^http\.inbound\|8080\|tls\.rbac\.meshd_allow_\.?denied$`,
		`^http\.inbound\|8080\|tls\.rbac\.meshd_deny_\.?denied$`,
		`^http\.inbound\|8080\|tls\.rbac\.meshd_deny_dry_run_\.?shadow_denied$`,
		`^meshd_allow_9090\.rbac\.denied$`,
		`^meshd_deny_9090\.rbac\.denied$`,
		`^meshd_deny_9090\.rbac\.meshd_deny_dry_run_\.?shadow_denied$`,
	} {
		re := regexp.MustCompile(pattern)
		var n int64
		for name, v := range res.Stats {
			if re.MatchString(name) {
				n += v
			}
		}
		if n == 0 {
			t.Errorf("no RBAC stat matching %s counted: %v", pattern, res.Stats)
		}
	}
	if !strings.Contains(res.Explain["client-0"], "DENIED") || !strings.Contains(res.Explain["client-0"], "demo/no-client/rule-0") {
		t.Errorf("explain client-0 -> web does not say denied by demo/no-client/rule-0:\n%s", res.Explain["client-0"])
	}
	if !strings.Contains(res.Explain["other-0"], "DENIED") || !strings.Contains(res.Explain["other-0"], "demo/web-callers") {
		t.Errorf("explain other-0 -> web does not say denied for want of an ALLOW rule of demo/web-callers:\n%s", res.Explain["other-0"])
	}
}

package e2e

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/netlab"
)

// The reduced experiment, for a machine where the harness is not root:
// no network namespaces, no interception, no capture. Each pod is a
// loopback address of this host (web-0 127.0.0.2, client-0 127.0.0.3);
// both are annotated meshd.io/interception: none, so their sidecars' listeners
// bind those addresses (translate.directListeners): the client app asks its
// own sidecar for the service (http://127.0.0.3:<service port>/), the
// sidecars talk mutual TLS, and web-0's sidecar hands the request to the
// app on 127.0.0.1. What the full experiment learns from tcpdump, this one
// learns from the ends: the app sees the client's SPIFFE ID as the server
// sidecar authenticated it, and a plaintext or certificate-less connection
// to the server sidecar is refused.

const (
	localWebIP    = "127.0.0.2"
	localClientIP = "127.0.0.3"
)

// localYAML describes the two loopback pods: %[1]d is the service port,
// %[2]d the app port (containerPort, on 127.0.0.1 and on web-0's address).
const localYAML = `apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {meshd.io/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 198.19.255.10
  selector: {app: web}
  ports: [{name: http, port: %[1]d, targetPort: %[2]d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: %[2]d}]
endpoints:
- addresses: [` + localWebIP + `]
  conditions: {ready: true}
  targetRef: {kind: Pod, namespace: demo, name: web-0}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo, labels: {app: web}, annotations: {meshd.io/interception: none}}
spec:
  serviceAccountName: web
  containers: [{name: app, image: app, ports: [{name: http, containerPort: %[2]d}]}]
status: {podIP: ` + localWebIP + `}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: demo, annotations: {meshd.io/interception: none}}
spec:
  serviceAccountName: client
  containers: [{name: curl, image: curl}]
status: {podIP: ` + localClientIP + `}
`

// LocalResult is what the reduced experiment observed.
type LocalResult struct {
	Requests, Failures int
	FirstFailures      []string
	// URL is what the client app asked for (its sidecar's listener).
	URL string
	// BodyHasMarker: the client received the page.
	BodyHasMarker bool
	// AppSawPeers are the SPIFFE IDs the app got in x-forwarded-client-cert
	// (set by web-0's sidecar from the client certificate it verified).
	AppSawPeers []string
	// SidecarPeers are the peers in web-0's sidecar's inbound access log.
	SidecarPeers []string
	// PlaintextRefused: a plain HTTP request to web-0's sidecar got no
	// answer; NoCertRefused: a TLS client without a mesh certificate got
	// none either.
	PlaintextRefused, NoCertRefused bool
	// ServerIdentity and ServerNotAfter: web-0's sidecar's certificate as
	// presented to a TLS client.
	ServerIdentity string
	ServerNotAfter time.Time
	// ServerSerials: web-0's workload certificate serials seen in its
	// sidecar's /certs during the run, in order.
	ServerSerials []string
	// Proxies: connected and in sync at the start.
	Proxies   int
	Operator  [][2]string
	MeshdLog  string
	EnvoyLogs map[string]string
}

// RunLocal runs the reduced experiment for opts.Duration (opts.Mesh,
// Kube, Replicas and the faults do not apply) and removes what it made.
func RunLocal(ctx context.Context, opts Options) (res *LocalResult, err error) {
	if opts.Interval == 0 {
		opts.Interval = 200 * time.Millisecond
	}
	dir, err := os.MkdirTemp("", "meshd-demo-")
	if err != nil {
		return nil, err
	}
	l := &local{opts: opts, dir: dir, res: &LocalResult{EnvoyLogs: map[string]string{}}}
	defer func() {
		l.stopAll()
		if cerr := os.RemoveAll(dir); cerr != nil && err == nil {
			err = cerr
		}
	}()
	err = l.run(ctx)
	return l.res, err
}

type local struct {
	opts            Options
	dir             string
	res             *LocalResult
	procs           []*netlab.Proc
	app             *http.Server
	meshd           *netlab.Proc
	envoys          map[string]*netlab.Proc
	admin           map[string]int
	marker          string
	svcPort         int
	appPort         int
	debugURL, xds   string
	caDir           string
	mu              sync.Mutex
	bootstrapSerial *big.Int // web-0's xDS client certificate
}

func (l *local) progress(format string, args ...any) {
	if l.opts.Progress != nil {
		fmt.Fprintf(l.opts.Progress, format+"\n", args...)
	}
}

func (l *local) run(ctx context.Context) error {
	l.marker = newMarker()
	var err error
	if l.appPort, err = freePortOn(localWebIP, "127.0.0.1"); err != nil {
		return err
	}
	if l.svcPort, err = freePortOn(localClientIP); err != nil {
		return err
	}
	if err := l.startApp(); err != nil {
		return err
	}
	if err := l.startMeshd(ctx); err != nil {
		return err
	}
	l.envoys, l.admin = map[string]*netlab.Proc{}, map[string]int{}
	for _, p := range []struct{ pod, sa string }{{"web-0", "web"}, {"client-0", "client"}} {
		if err := l.startSidecar(ctx, p.pod, p.sa); err != nil {
			return err
		}
	}
	if err := waitFor(ctx, 60*time.Second, "both sidecars ACKing their config", l.allAcked); err != nil {
		return err
	}
	l.res.Proxies = 2
	l.probeServer(ctx)
	l.traffic(ctx)
	if l.opts.Operator {
		l.operatorCommands(ctx)
	}
	l.res.SidecarPeers = inboundPeers(l.envoys["web-0"].Log())
	return nil
}

// startApp serves the page on 127.0.0.1:<app port> (web-0's app) and notes
// the peer identities its sidecar vouches for.
func (l *local) startApp() error {
	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", l.appPort))
	if err != nil {
		return err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, part := range strings.Split(r.Header.Get("X-Forwarded-Client-Cert"), ";") {
			if uri, ok := strings.CutPrefix(part, "URI="); ok {
				l.mu.Lock()
				if !slices.Contains(l.res.AppSawPeers, uri) {
					l.res.AppSawPeers = append(l.res.AppSawPeers, uri)
				}
				l.mu.Unlock()
			}
		}
		w.Header().Set("X-Meshd-Demo", l.marker)
		fmt.Fprintf(w, "<html><body><h1>%s</h1></body></html>\n", l.marker)
	})}
	go func() { _ = srv.Serve(lis) }()
	l.app = srv
	l.progress("app: web-0 serves on 127.0.0.1:%d", l.appPort)
	return nil
}

func (l *local) startMeshd(ctx context.Context) error {
	localDir := filepath.Join(l.dir, "mesh")
	l.caDir = filepath.Join(l.dir, "ca")
	if err := os.MkdirAll(localDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(localDir, "demo.yaml"), []byte(fmt.Sprintf(localYAML, l.svcPort, l.appPort)), 0o644); err != nil {
		return err
	}
	xdsPort, err := freePort()
	if err != nil {
		return err
	}
	debugPort, err := freePort()
	if err != nil {
		return err
	}
	l.xds, l.debugURL = fmt.Sprintf("127.0.0.1:%d", xdsPort), fmt.Sprintf("http://127.0.0.1:%d", debugPort)
	args := []string{"serve", "--local-dir", localDir, "--ca-dir", l.caDir, "--xds-addr", l.xds,
		"--debug-addr", strings.TrimPrefix(l.debugURL, "http://"), "--hold-off", "20ms"}
	if l.opts.CertTTL > 0 {
		args = append(args, "--cert-ttl", l.opts.CertTTL.String())
	}
	if l.meshd, err = l.start("meshd", l.opts.Meshd, args...); err != nil {
		return err
	}
	l.progress("meshd: serving xDS on %s (local dir %s)", l.xds, localDir)
	return waitFor(ctx, 30*time.Second, "meshd /readyz", func() error {
		if l.meshd.Exited() {
			return fmt.Errorf("meshd exited: %s", l.meshd.LogTail(2000))
		}
		_, err := getBody(ctx, l.debugURL+"/readyz")
		return err
	})
}

// startSidecar renders the pod's bootstrap with `meshd bootstrap` and
// starts Envoy on it, its admin API on a free port.
func (l *local) startSidecar(ctx context.Context, pod, sa string) error {
	out := filepath.Join(l.dir, "sidecar-"+pod)
	admin, err := freePort()
	if err != nil {
		return err
	}
	if b, err := runCmd(ctx, l.opts.Meshd, "bootstrap", "--ca-dir", l.caDir, "--namespace", "demo", "--pod", pod,
		"--service-account", sa, "--xds-addr", l.xds, "--api", cmp.Or(l.opts.API, "delta"), "--admin-port", strconv.Itoa(admin), "--out", out); err != nil {
		return fmt.Errorf("e2e: meshd bootstrap: %w: %s", err, b)
	}
	if pod == "web-0" {
		if l.bootstrapSerial, err = readSerial(filepath.Join(out, "cert-chain.pem")); err != nil {
			return err
		}
	}
	e, err := l.start("envoy-"+pod, l.opts.Envoy, append([]string{"-c", filepath.Join(out, "bootstrap.yaml")}, bootstrap.EnvoyFlags(1)...)...)
	if err != nil {
		return err
	}
	l.envoys[pod], l.admin[pod] = e, admin
	l.progress("sidecar: %s: Envoy (no interception, listeners on %s), identity spiffe://cluster.local/ns/demo/sa/%s",
		pod, map[string]string{"web-0": localWebIP, "client-0": localClientIP}[pod], sa)
	return nil
}

func (l *local) allAcked() error {
	for name, e := range l.envoys {
		if e.Exited() {
			return fmt.Errorf("envoy %s exited: %s", name, e.LogTail(2000))
		}
	}
	if err := proxiesInSync([]string{l.debugURL}, 2); err != nil {
		return err
	}
	// And the client's listener is up.
	c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", localClientIP, l.svcPort), time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// probeServer connects to web-0's sidecar as an outsider would: plain HTTP,
// then TLS without a client certificate (reading the certificate the
// sidecar presents).
func (l *local) probeServer(ctx context.Context) {
	addr := fmt.Sprintf("%s:%d", localWebIP, l.appPort)
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get("http://" + addr + "/")
	if err == nil {
		resp.Body.Close()
	}
	l.res.PlaintextRefused = err != nil
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // reading the certificate is the point
	if err != nil {
		l.res.NoCertRefused = true
		return
	}
	defer conn.Close()
	if certs := conn.ConnectionState().PeerCertificates; len(certs) > 0 {
		if len(certs[0].URIs) > 0 {
			l.res.ServerIdentity = certs[0].URIs[0].String()
		}
		l.res.ServerNotAfter = certs[0].NotAfter
	}
	// TLS 1.3: the server's verdict on the missing certificate arrives
	// with the first read.
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	_, _ = conn.Write([]byte("GET / HTTP/1.1\r\nHost: web\r\n\r\n"))
	_, err = conn.Read(make([]byte, 1))
	l.res.NoCertRefused = err != nil
}

func (l *local) traffic(ctx context.Context) {
	l.res.URL = fmt.Sprintf("http://%s:%d/", localClientIP, l.svcPort)
	l.progress("traffic: the client asks its sidecar, %s, every %s for %s", l.res.URL, l.opts.Interval, l.opts.Duration)
	client := &http.Client{Timeout: 5 * time.Second}
	end := time.Now().Add(l.opts.Duration)
	nextWatch := time.Now()
	for first := true; time.Now().Before(end); first = false {
		if time.Now().After(nextWatch) {
			l.watchSerials(ctx)
			nextWatch = time.Now().Add(2 * time.Second)
		}
		l.res.Requests++
		body, err := l.get(ctx, client)
		if err != nil {
			l.res.Failures++
			if len(l.res.FirstFailures) < 5 {
				l.res.FirstFailures = append(l.res.FirstFailures, fmt.Sprintf("%s: %v", time.Now().Format(time.TimeOnly), err))
			}
		} else if first || !l.res.BodyHasMarker {
			l.res.BodyHasMarker = strings.Contains(body, l.marker)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(l.opts.Interval):
		}
	}
	l.watchSerials(ctx)
	l.progress("traffic: %d requests, %d failed", l.res.Requests, l.res.Failures)
}

func (l *local) get(ctx context.Context, client *http.Client) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, l.res.URL, nil)
	req.Host = "web.demo"
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return string(b), err
}

// watchSerials notes web-0's workload certificate serials (Envoy's /certs
// on its admin port), leaving out its xDS client certificate.
func (l *local) watchSerials(ctx context.Context) {
	b, err := getBody(ctx, fmt.Sprintf("http://127.0.0.1:%d/certs", l.admin["web-0"]))
	if err != nil {
		return
	}
	certs, err := workloadCerts(b, l.bootstrapSerial)
	if err != nil {
		return
	}
	for _, c := range certs {
		if !slices.Contains(l.res.ServerSerials, c.serial) {
			l.res.ServerSerials = append(l.res.ServerSerials, c.serial)
		}
	}
}

func (l *local) operatorCommands(ctx context.Context) {
	addr := strings.TrimPrefix(l.debugURL, "http://")
	for _, args := range [][]string{{"proxy-status"}, {"certs"}} {
		out, err := runCmd(ctx, l.opts.Meshd, append(args, "--debug-addr", addr)...)
		text := string(out)
		if err != nil {
			text += err.Error() + "\n"
		}
		l.res.Operator = append(l.res.Operator, [2]string{"meshd " + strings.Join(args, " "), text})
	}
}

func (l *local) start(name, bin string, args ...string) (*netlab.Proc, error) {
	p, err := netlab.StartProc(l.dir, name, netlab.ProcOptions{}, bin, args...)
	if err != nil {
		return nil, err
	}
	l.procs = append(l.procs, p)
	return p, nil
}

// stopAll ends every process and the app server, keeping the logs' tails
// in the result.
func (l *local) stopAll() {
	for i := len(l.procs) - 1; i >= 0; i-- {
		p := l.procs[i]
		p.Stop()
		if p == l.meshd {
			l.res.MeshdLog = p.LogTail(20000)
		} else if pod, ok := strings.CutPrefix(p.Name, "envoy-"); ok {
			l.res.EnvoyLogs[pod] = p.LogTail(20000)
		}
	}
	l.procs = nil
	if l.app != nil {
		_ = l.app.Close()
	}
}

// freePortOn returns a port free on every given address.
func freePortOn(addrs ...string) (int, error) {
	for range 20 {
		port, err := freePort()
		if err != nil {
			return 0, err
		}
		ok := true
		for _, a := range addrs {
			lis, err := net.Listen("tcp", fmt.Sprintf("%s:%d", a, port))
			if err != nil {
				ok = false
				break
			}
			lis.Close()
		}
		if ok {
			return port, nil
		}
	}
	return 0, errors.New("e2e: no port free on " + strings.Join(addrs, ", "))
}

// Package e2e runs the seed experiment on one machine: a server pod running
// nginx, a client pod curling it through its Service every 200 ms, and
// tcpdump on the bridge between them, with or without meshd. Pods are
// netlab network namespaces; meshd runs on a local directory of Kubernetes
// YAML describing them; the sidecars are real Envoys running as the proxy
// uid behind the iptables rules of `meshd iptables`.
//
// The e2e tests and `make demo` both drive it: tests assert on the Result,
// the demo prints it.
package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/internal/netlab"
)

// ProxyUID is the uid the sidecars run as (not redirected by iptables).
const ProxyUID = 1337

// Options configure one run.
type Options struct {
	Meshd, Envoy string // binaries
	// Mesh runs meshd and the sidecars; without it the pods talk directly.
	Mesh bool
	// CertTTL is the workload certificate lifetime (0: meshd's default).
	CertTTL time.Duration
	// Duration is how long the client sends requests.
	Duration time.Duration
	// Interval between requests (default 200 ms).
	Interval time.Duration
	// API is the sidecars' ADS flavour: "delta" (default) or "sotw".
	API string
	// RotateRoot asks meshd for a root rotation (meshd ca rotate-root)
	// RotateAfter into the traffic; the phases wait RootGrace each.
	RotateRoot  bool
	RotateAfter time.Duration
	RootGrace   time.Duration
	// Replicas of meshd (local mode, default 1); sidecars know them all.
	Replicas int
	// KillMeshd kills the busiest replica a third into the traffic (and
	// restarts it when it is the only one, as with Kube).
	KillMeshd bool
	// Kube, if set, runs meshd against this cluster and creates the pods
	// through its injection webhook; otherwise meshd serves a local
	// directory describing the lab and the harness bootstraps the sidecars.
	Kube *Kube
	// Fault, if set, runs FaultAfter into the traffic (e.g. stop a
	// dependency) while requests go on.
	Fault      func()
	FaultAfter time.Duration
	// Operator runs meshd's operator commands at the end of the traffic and
	// keeps their output in Result.Operator.
	Operator bool
	// Progress, if set, receives a line per step.
	Progress io.Writer
	// GRPCHelper, if set, is a program the workloads experiment runs as a
	// gRPC app: "<GRPCHelper> grpc-helper serve <addr>" serves the gRPC
	// health service, "... check <addr> <service>" calls it and prints
	// what it answered (see RunApps).
	GRPCHelper string
}

// Result is what the experiment observed.
type Result struct {
	Requests, Failures int
	// FirstFailures holds up to 5 failure descriptions.
	FirstFailures []string
	// BodyHasMarker: the client received the page (with its secret marker).
	BodyHasMarker bool
	// PlaintextSeen: the capture holds the page's marker in clear;
	// HeadersSeen: it holds nginx's response headers in clear.
	PlaintextSeen, HeadersSeen bool
	// ClientHellos counts TLS ClientHello records in the capture.
	ClientHellos int
	// Packets counts captured TCP packets between the pods.
	Packets int
	// Wire is what the eavesdropper read of the TLS handshakes it saw
	// (sidecar to sidecar and sidecar to meshd alike).
	Wire Wire
	// PeerIdentities are the SPIFFE IDs the server's sidecar logged for
	// inbound connections (mesh only).
	PeerIdentities []string
	// ServerSerials are the distinct serials of the server sidecar's
	// certificate seen in Envoy's /certs during the run, in order.
	ServerSerials []string
	// RootSets are the distinct sets of trusted roots (serials, sorted,
	// comma-joined) the server sidecar held during the run, in order: a
	// root rotation shows old, old+new, new.
	RootSets []string
	// CredentialRefreshes counts how often the harness (as the kubelet)
	// rewrote the sidecars' xDS credentials after the CA changed.
	CredentialRefreshes int
	// Reconnected: after KillMeshd, every sidecar was connected and synced
	// again.
	Reconnected bool
	// Namespace is where the pods ran.
	Namespace string
	// Operator holds the output of each operator command (Options.Operator).
	Operator [][2]string
	// MeshdLog, EnvoyLogs: for diagnosis.
	MeshdLog  string
	EnvoyLogs map[string]string
}

// Run performs the experiment once in a new lab and removes everything it
// made before returning.
func Run(ctx context.Context, opts Options) (res *Result, err error) {
	if opts.Interval == 0 {
		opts.Interval = 200 * time.Millisecond
	}
	if opts.API == "" {
		opts.API = "delta"
	}
	lab, err := netlab.New(ctx)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := lab.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("e2e: clean-up: %w", cerr)
		}
	}()
	s := &seed{opts: opts, lab: lab, res: &Result{EnvoyLogs: map[string]string{}}, namespace: "demo"}
	defer s.cleanupKube()
	defer s.collectLogs()
	err = s.run(ctx)
	return s.res, err
}

type seed struct {
	opts           Options
	lab            *netlab.Lab
	res            *Result
	server, client *netlab.Pod
	serviceIP      string
	marker         string
	meshd          *netlab.Proc
	envoys         map[string]*netlab.Proc
	debugURL       string
	caDir, xdsAddr string
	namespace      string
	webhook        string
	replicas       []*replica
	wantProxies    int // sidecars allAcked expects (default 2)
	sidecars       []sidecar
	mu             sync.Mutex
	// bootstrapSerials are the server sidecar's xDS client certificates.
	bootstrapSerials []*big.Int
	// nginxPorts nginx listens on besides 8080.
	nginxPorts []int
}

// labSeed makes a lab with the named pods and a seed on it, for the
// experiments that describe their own pods (opts.API defaults to delta).
// The caller closes s.lab; on an error here nothing is left open.
func labSeed(ctx context.Context, opts Options, names ...string) (*seed, map[string]*netlab.Pod, error) {
	lab, err := netlab.New(ctx)
	if err != nil {
		return nil, nil, err
	}
	if opts.API == "" {
		opts.API = "delta"
	}
	pods := map[string]*netlab.Pod{}
	for _, name := range names {
		if pods[name], err = lab.AddPod(ctx, name); err != nil {
			return nil, nil, errors.Join(err, lab.Close())
		}
	}
	return &seed{opts: opts, lab: lab, res: &Result{EnvoyLogs: map[string]string{}}, namespace: "demo"}, pods, nil
}

func (s *seed) progress(format string, args ...any) {
	if s.opts.Progress != nil {
		fmt.Fprintf(s.opts.Progress, format+"\n", args...)
	}
}

func (s *seed) run(ctx context.Context) error {
	var err error
	if s.server, err = s.lab.AddPod(ctx, "web-0"); err != nil {
		return err
	}
	if s.client, err = s.lab.AddPod(ctx, "client-0"); err != nil {
		return err
	}
	s.serviceIP = fmt.Sprintf("198.19.%d.10", s.lab.Index)
	s.marker = newMarker()
	s.progress("lab: bridge %s, web-0 %s, client-0 %s", s.lab.Bridge, s.server.IP, s.client.IP)
	if err := s.startNginx(ctx); err != nil {
		return err
	}
	switch {
	case s.opts.Mesh && s.opts.Kube != nil:
		if err := s.startKubeMesh(ctx); err != nil {
			return err
		}
	case s.opts.Mesh:
		if err := s.startMesh(ctx); err != nil {
			return err
		}
	}
	s.res.Namespace = s.namespace
	// kube-proxy's part: the Service's ClusterIP reaches the pod. In the mesh
	// the sidecar's rules come first and the sidecar picks the endpoint.
	if _, err := s.client.Run(ctx, "iptables", "-t", "nat", "-A", "OUTPUT", "-d", s.serviceIP, "-p", "tcp", "--dport", "80",
		"-j", "DNAT", "--to-destination", s.server.IP.String()+":8080"); err != nil {
		return err
	}
	return s.traffic(ctx)
}

// startNginx serves a page holding the marker on 0.0.0.0:8080 in web-0.
func (s *seed) startNginx(ctx context.Context) error { return s.startNginxIn(ctx, s.server) }

// startNginxIn serves the marker page on 0.0.0.0:8080 in a pod; its access
// log is <lab>/nginx-<pod>/access.log.
func (s *seed) startNginxIn(ctx context.Context, pod *netlab.Pod) error {
	dir := filepath.Join(s.lab.Dir, "nginx-"+pod.Name)
	if err := os.MkdirAll(filepath.Join(dir, "html"), 0o755); err != nil {
		return err
	}
	page := fmt.Sprintf("<html><body><h1>%s</h1></body></html>\n", s.marker)
	listen := "listen 8080;"
	for _, p := range s.nginxPorts {
		listen += fmt.Sprintf(" listen %d;", p)
	}
	conf := fmt.Sprintf(`daemon off;
user nobody nogroup;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr;
events { worker_connections 256; }
http {
  access_log %[1]s/access.log;
  client_body_temp_path %[1]s/tmp;
  proxy_temp_path %[1]s/tmp;
  fastcgi_temp_path %[1]s/tmp;
  uwsgi_temp_path %[1]s/tmp;
  scgi_temp_path %[1]s/tmp;
  server {
    %[3]s
    root %[1]s/html;
    add_header X-Meshd-Demo %[2]s;
  }
}
`, dir, s.marker, listen)
	if err := os.WriteFile(filepath.Join(dir, "html", "index.html"), []byte(page), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	if _, err := s.lab.Start("nginx-"+pod.Name, netlab.ProcOptions{Pod: pod}, "nginx", "-c", filepath.Join(dir, "nginx.conf"), "-p", dir); err != nil {
		return err
	}
	return waitFor(ctx, 10*time.Second, "nginx on "+pod.Name+":8080", func() error {
		_, err := pod.Run(ctx, "curl", "-sf", "-o", "/dev/null", "http://127.0.0.1:8080/")
		return err
	})
}

// traffic runs the client loop for the duration while tcpdump records the
// bridge, and (in the mesh) watches the server sidecar's certificate.
func (s *seed) traffic(ctx context.Context) error {
	capture, err := s.lab.Capture(ctx, "bridge")
	if err != nil {
		return err
	}
	s.progress("traffic: curl http://%s/ every %s for %s, tcpdump on %s", s.serviceIP, s.opts.Interval, s.opts.Duration, s.lab.Bridge)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	if s.opts.Mesh {
		wg.Add(2)
		go func() {
			defer wg.Done()
			s.watchSerials(ctx, stop)
		}()
		go func() {
			defer wg.Done()
			if s.opts.Kube != nil {
				s.kubeKubelet(ctx, stop)
			} else {
				s.kubelet(ctx, stop)
			}
		}()
	}
	if s.opts.KillMeshd && s.opts.Mesh {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.killMeshd(ctx, stop)
		}()
	}
	if s.opts.RotateRoot {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.rotateRoot(ctx, stop)
		}()
	}
	if s.opts.Fault != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-time.After(s.opts.FaultAfter):
				s.progress("fault: %s into the traffic", s.opts.FaultAfter)
				s.opts.Fault()
			case <-stop:
			}
		}()
	}
	end := time.Now().Add(s.opts.Duration)
	for i := 0; time.Now().Before(end); i++ {
		s.request(ctx, i == 0)
		select {
		case <-ctx.Done():
			close(stop)
			wg.Wait()
			return ctx.Err()
		case <-time.After(s.opts.Interval):
		}
	}
	close(stop)
	wg.Wait()
	s.watchOnce(ctx) // the last serial
	if s.opts.Operator && s.opts.Mesh {
		s.operatorCommands(ctx)
	}
	pcap, err := capture.Stop()
	if err != nil {
		return err
	}
	if s.res.Wire, err = readWire(pcap); err != nil {
		return err
	}
	s.res.PlaintextSeen = strings.Contains(string(pcap), s.marker)
	s.res.HeadersSeen = strings.Contains(string(pcap), "Server: nginx") || strings.Contains(string(pcap), "X-Meshd-Demo")
	if s.res.ClientHellos, err = capture.Count(ctx, netlab.TLSClientHellos); err != nil {
		return err
	}
	if s.res.Packets, err = capture.Count(ctx, "tcp and host "+s.server.IP.String()+" and host "+s.client.IP.String()); err != nil {
		return err
	}
	if s.opts.Mesh {
		s.res.PeerIdentities = inboundPeers(s.envoys["web-0"].Log())
	}
	s.progress("traffic: %d requests, %d failed", s.res.Requests, s.res.Failures)
	return nil
}

// request is one curl from the client pod, as the app would send it.
func (s *seed) request(ctx context.Context, keepBody bool) {
	s.res.Requests++
	args := []string{"-sS", "-m", "5", "-w", "\n%{http_code}", "http://" + s.serviceIP + "/"}
	out, err := s.client.Run(ctx, "curl", args...)
	code := out[strings.LastIndexByte(out, '\n')+1:]
	if err != nil || code != "200" {
		s.res.Failures++
		if len(s.res.FirstFailures) < 5 {
			s.res.FirstFailures = append(s.res.FirstFailures, fmt.Sprintf("%s: code %q: %v", time.Now().Format(time.TimeOnly), code, err))
		}
		return
	}
	if keepBody || !s.res.BodyHasMarker {
		s.res.BodyHasMarker = strings.Contains(out, s.marker)
	}
}

var peerRE = regexp.MustCompile(`\[meshd inbound\] start=\S+ pod=\S+ port=\d+ peer=(\S+)`)

// inboundPeers returns the distinct peer identities in a sidecar's
// inbound access log.
func inboundPeers(log string) []string {
	var ids []string
	for _, m := range peerRE.FindAllStringSubmatch(log, -1) {
		if !slices.Contains(ids, m[1]) {
			ids = append(ids, m[1])
		}
	}
	return ids
}

// newMarker is the random text of the served page: seen in a capture, it
// means the page crossed in clear.
func newMarker() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "meshd-secret-page-" + hex.EncodeToString(b)
}

func waitFor(ctx context.Context, timeout time.Duration, what string, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("e2e: %s not ready after %s: %w", what, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *seed) collectLogs() {
	if s.meshd != nil {
		s.res.MeshdLog = s.meshd.LogTail(20000)
	}
	for name, e := range s.envoys {
		s.res.EnvoyLogs[name] = e.LogTail(20000)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// getBody GETs url and returns the body of a 200 answer.
func getBody(ctx context.Context, url string) ([]byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s: %s", url, resp.Status, b)
	}
	return b, err
}

func getJSON(ctx context.Context, url string, v any) error {
	b, err := getBody(ctx, url)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// runCmd runs a host command and returns its combined output.
func runCmd(ctx context.Context, name string, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

// operatorCommands runs what an operator would against this meshd.
func (s *seed) operatorCommands(ctx context.Context) {
	addr := strings.TrimPrefix(s.debugURL, "http://")
	for _, args := range [][]string{
		{"proxy-status"},
		{"explain", "--from", "client-0." + s.namespace, "--to", "web." + s.namespace},
		{"explain", "--from", "client-0." + s.namespace, "--to", "web." + s.namespace, "-o", "json"},
		{"certs"},
		{"check"},
	} {
		out, err := runCmd(ctx, s.opts.Meshd, append(args, "--debug-addr", addr)...)
		text := string(out)
		if err != nil {
			text += err.Error() + "\n"
		}
		s.res.Operator = append(s.res.Operator, [2]string{"meshd " + strings.Join(args, " "), text})
	}
}

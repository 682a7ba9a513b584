package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/debug"
	"github.com/meshd/meshd/internal/netlab"
)

// meshYAML describes the lab to meshd as Kubernetes objects: the demo
// namespace in the mesh, the web Service with its EndpointSlice, both pods.
const meshYAML = `apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {meshd.io/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: %[1]s
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [%[2]s]
  conditions: {ready: true}
  targetRef: {kind: Pod, namespace: demo, name: web-0}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo, labels: {app: web}}
spec:
  serviceAccountName: web
  containers: [{name: nginx, image: nginx, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: %[2]s}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: demo}
spec:
  serviceAccountName: client
  containers: [{name: curl, image: curl}]
status: {podIP: %[3]s}
`

// xdsPort is where meshd serves xDS on the lab's gateway address.
const xdsPort = 15012

// startMesh starts meshd on the lab's description, then gives each pod its
// interception rules and its sidecar, and waits until both sidecars have
// ACKed their whole configuration.
func (s *seed) startMesh(ctx context.Context) error {
	dir := filepath.Join(s.lab.Dir, "meshd")
	localDir, caDir := filepath.Join(dir, "mesh"), filepath.Join(dir, "ca")
	if err := os.MkdirAll(localDir, 0o755); err != nil {
		return err
	}
	desc := fmt.Sprintf(meshYAML, s.serviceIP, s.server.IP, s.client.IP)
	if err := os.WriteFile(filepath.Join(localDir, "lab.yaml"), []byte(desc), 0o644); err != nil {
		return err
	}
	s.caDir = caDir
	replicas := max(s.opts.Replicas, 1)
	var addrs []string
	for i := range replicas {
		r, err := s.startReplica(ctx, i, localDir, caDir)
		if err != nil {
			return err
		}
		s.replicas = append(s.replicas, r)
		addrs = append(addrs, r.xdsAddr)
	}
	s.meshd, s.debugURL = s.replicas[0].proc, s.replicas[0].debugURL
	xdsAddr := strings.Join(addrs, ",")
	s.xdsAddr = xdsAddr
	s.progress("meshd: serving xDS on %s (local dir %s)", xdsAddr, localDir)
	s.envoys = map[string]*netlab.Proc{}
	for _, p := range []struct {
		pod *netlab.Pod
		sa  string
	}{{s.server, "web"}, {s.client, "client"}} {
		if err := s.addSidecar(ctx, p.pod, p.sa, caDir, xdsAddr); err != nil {
			return err
		}
	}
	return waitFor(ctx, 60*time.Second, "both sidecars ACKing their config", s.allAcked)
}

// replica is one meshd process of the lab.
type replica struct {
	proc              *netlab.Proc
	debugURL, xdsAddr string
	args              []string
	name              string
}

// startReplica starts meshd replica i (xDS on the gateway, port 15012+i)
// and waits until it is ready. Replicas share the local dir and the CA.
func (s *seed) startReplica(ctx context.Context, i int, localDir, caDir string) (*replica, error) {
	debugPort, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &replica{xdsAddr: fmt.Sprintf("%s:%d", s.lab.Gateway, xdsPort+i), debugURL: fmt.Sprintf("http://127.0.0.1:%d", debugPort),
		name: fmt.Sprintf("meshd-%d", i)}
	r.args = []string{"serve", "--local-dir", localDir, "--ca-dir", caDir, "--xds-addr", r.xdsAddr,
		"--debug-addr", fmt.Sprintf("127.0.0.1:%d", debugPort), "--hold-off", "20ms"}
	if s.opts.CertTTL > 0 {
		r.args = append(r.args, "--cert-ttl", s.opts.CertTTL.String())
	}
	if s.opts.RootGrace > 0 {
		r.args = append(r.args, "--root-rotation-grace", s.opts.RootGrace.String())
	}
	return r, s.runReplica(ctx, r)
}

func (s *seed) runReplica(ctx context.Context, r *replica) error {
	var err error
	if r.proc, err = s.lab.Start(r.name, netlab.ProcOptions{}, s.opts.Meshd, r.args...); err != nil {
		return err
	}
	return waitFor(ctx, 30*time.Second, r.name+" /readyz", func() error {
		if r.proc.Exited() {
			return fmt.Errorf("meshd exited: %s", r.proc.LogTail(2000))
		}
		_, err := getBody(ctx, r.debugURL+"/readyz")
		return err
	})
}

// addSidecar does what injection and the kubelet would: render the
// bootstrap, apply the iptables rules in the pod (with the extra
// arguments the injector would give), start Envoy as the proxy uid.
func (s *seed) addSidecar(ctx context.Context, pod *netlab.Pod, sa, caDir, xdsAddr string, iptables ...string) error {
	out := filepath.Join(s.lab.Dir, "sidecar-"+pod.Name)
	if err := s.renderCreds(ctx, pod, sa, out); err != nil {
		return err
	}
	if _, err := pod.Run(ctx, s.opts.Meshd, append([]string{"iptables"}, iptables...)...); err != nil {
		return err
	}
	envoy, err := s.lab.Start("envoy-"+pod.Name, netlab.ProcOptions{Pod: pod, UID: ProxyUID, GID: ProxyUID}, s.opts.Envoy,
		append([]string{"-c", filepath.Join(out, "bootstrap.yaml"), "--base-id", strconv.Itoa(s.lab.Index*100 + len(s.envoys))},
			bootstrap.EnvoyFlags(1)...)...)
	if err != nil {
		return err
	}
	s.envoys[pod.Name] = envoy
	s.sidecars = append(s.sidecars, sidecar{pod: pod, sa: sa, dir: out})
	s.progress("sidecar: %s: Envoy as uid %d, iptables applied, identity spiffe://cluster.local/ns/demo/sa/%s", pod.Name, ProxyUID, sa)
	return nil
}

// allAcked checks meshd's view (all live replicas together): two proxies,
// every type ACKed at the version sent, no NACK.
func (s *seed) allAcked() error {
	for name, e := range s.envoys {
		if e.Exited() {
			return fmt.Errorf("envoy %s exited: %s", name, e.LogTail(2000))
		}
	}
	urls := []string{s.debugURL}
	if len(s.replicas) > 0 {
		urls = nil
		for _, r := range s.replicas {
			if !r.proc.Exited() {
				urls = append(urls, r.debugURL)
			}
		}
	}
	want := 2
	if s.wantProxies > 0 {
		want = s.wantProxies
	}
	return proxiesInSync(urls, want)
}

// proxiesInSync checks meshd's view (the debug API of every live replica
// together): want proxies, every type ACKed at the version sent, no NACK.
func proxiesInSync(urls []string, want int) error {
	var v debug.Proxies
	for _, u := range urls {
		var part debug.Proxies
		if err := getJSON(context.Background(), u+"/debug/proxies", &part); err != nil {
			return err
		}
		v.Proxies = append(v.Proxies, part.Proxies...)
	}
	if len(v.Proxies) != want {
		return fmt.Errorf("%d proxies connected", len(v.Proxies))
	}
	for _, p := range v.Proxies {
		if len(p.Types) < 5 {
			return fmt.Errorf("%s subscribed to %d types", p.NodeID, len(p.Types))
		}
		for typ, st := range p.Types {
			if st != nil && st.LastNACK != nil {
				return fmt.Errorf("%s NACKed %s: %s", p.NodeID, typ, st.LastNACK.Error)
			}
			if st == nil || st.AckedVersion == "" || st.AckedVersion != st.SentVersion {
				return fmt.Errorf("%s: %s not ACKed", p.NodeID, typ)
			}
		}
	}
	return nil
}

// watchOnce records the serials of the workload certificates the server
// sidecar holds (Envoy's /certs), leaving out the xDS client certificate
// from its bootstrap.
func (s *seed) watchOnce(ctx context.Context) {
	if s.envoys == nil {
		return
	}
	out, err := s.server.Run(ctx, "curl", "-s", "-m", "2", "http://127.0.0.1:15000/certs")
	if err != nil {
		return
	}
	s.mu.Lock()
	exclude := slices.Clone(s.bootstrapSerials)
	s.mu.Unlock()
	certs, err := workloadCerts([]byte(out), exclude...)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range certs {
		if !slices.Contains(s.res.ServerSerials, c.serial) {
			s.res.ServerSerials = append(s.res.ServerSerials, c.serial)
		}
		if set := strings.Join(c.roots, ","); len(c.roots) > 0 && (len(s.res.RootSets) == 0 || s.res.RootSets[len(s.res.RootSets)-1] != set) {
			s.res.RootSets = append(s.res.RootSets, set)
		}
	}
}

// envoyCert is a workload certificate in Envoy's /certs: its serial (hex)
// and the serials of the roots it is checked against, sorted.
type envoyCert struct {
	serial string
	roots  []string
}

// workloadCerts decodes Envoy's /certs, leaving out the certificates with
// the given serials (the xDS client certificate of the bootstrap).
func workloadCerts(body []byte, exclude ...*big.Int) ([]envoyCert, error) {
	type cert struct {
		Serial string `json:"serial_number"`
	}
	var certs struct {
		Certificates []struct {
			CA        []cert `json:"ca_cert"`
			CertChain []cert `json:"cert_chain"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal(body, &certs); err != nil {
		return nil, err
	}
	var out []envoyCert
	for _, c := range certs.Certificates {
		if len(c.CertChain) == 0 {
			continue
		}
		n, ok := new(big.Int).SetString(c.CertChain[0].Serial, 16)
		if !ok || slices.ContainsFunc(exclude, func(b *big.Int) bool { return b != nil && b.Cmp(n) == 0 }) {
			continue
		}
		ec := envoyCert{serial: n.Text(16)}
		for _, r := range c.CA {
			ec.roots = append(ec.roots, r.Serial)
		}
		slices.Sort(ec.roots)
		out = append(out, ec)
	}
	return out, nil
}

// readSerial returns the serial of the first certificate in a PEM file.
func readSerial(path string) (*big.Int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("e2e: %s holds no PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("e2e: %s: %w", path, err)
	}
	return c.SerialNumber, nil
}

func (s *seed) watchSerials(ctx context.Context, stop <-chan struct{}) {
	for {
		s.watchOnce(ctx)
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

// sidecar is what the kubelet part of the harness keeps up to date.
type sidecar struct {
	pod *netlab.Pod
	sa  string
	dir string
	// secret and version: the credentials Secret (cluster mode) and the
	// resourceVersion last written to dir.
	secret, version string
}

// renderCreds runs `meshd bootstrap` for a pod into dir, readable by the
// proxy uid. The server sidecar's xDS client certificate serial is kept
// to tell it apart from its workload certificates.
func (s *seed) renderCreds(ctx context.Context, pod *netlab.Pod, sa, dir string) error {
	if b, err := runCmd(ctx, s.opts.Meshd, "bootstrap", "--ca-dir", s.caDir, "--namespace", "demo", "--pod", pod.Name,
		"--service-account", sa, "--xds-addr", s.xdsAddr, "--api", s.opts.API, "--out", dir); err != nil {
		return fmt.Errorf("e2e: meshd bootstrap: %w: %s", err, b)
	}
	if pod == s.server {
		serial, err := readSerial(filepath.Join(dir, "cert-chain.pem"))
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.bootstrapSerials = append(s.bootstrapSerials, serial)
		s.mu.Unlock()
	}
	if b, err := runCmd(ctx, "chown", "-R", fmt.Sprintf("%d:%d", ProxyUID, ProxyUID), dir); err != nil {
		return fmt.Errorf("e2e: chown: %w: %s", err, b)
	}
	return nil
}

// kubelet plays the kubelet's part for the sidecars' credential Secrets:
// when the CA changes (a root rotation step), it renders fresh xDS
// credentials and moves them into each sidecar's watched directory, file by
// file with atomic renames, as a Secret volume update would.
func (s *seed) kubelet(ctx context.Context, stop <-chan struct{}) {
	link := filepath.Join(s.caDir, "meshd-ca")
	last, _ := os.Readlink(link)
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		cur, err := os.Readlink(link)
		if err != nil || cur == last {
			continue
		}
		last = cur
		for _, sc := range s.sidecars {
			staging := sc.dir + ".next"
			if err := s.renderCreds(ctx, sc.pod, sc.sa, staging); err != nil {
				s.progress("kubelet: %s: %v", sc.pod.Name, err)
				continue
			}
			for _, f := range []string{"root-cert.pem", "cert-chain.pem", "key.pem"} {
				if err := os.Rename(filepath.Join(staging, f), filepath.Join(sc.dir, f)); err != nil {
					s.progress("kubelet: %s: %v", sc.pod.Name, err)
				}
			}
			os.RemoveAll(staging)
		}
		s.res.CredentialRefreshes++
		s.progress("kubelet: CA changed; sidecar xDS credentials refreshed")
	}
}

// rotateRoot asks meshd for a root rotation after RotateAfter.
func (s *seed) rotateRoot(ctx context.Context, stop <-chan struct{}) {
	select {
	case <-stop:
		return
	case <-ctx.Done():
		return
	case <-time.After(s.opts.RotateAfter):
	}
	args := []string{"ca", "rotate-root", "--ca-dir", s.caDir}
	if s.opts.Kube != nil {
		args = []string{"ca", "rotate-root", "--kubeconfig", s.opts.Kube.Kubeconfig}
	}
	out, err := runCmd(ctx, s.opts.Meshd, args...)
	s.progress("meshd ca rotate-root: %s%v", out, errOrEmpty(err))
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// killMeshd kills (SIGKILL) the replica holding the most streams at
// Duration/3, and restarts it 2 s later if it was the only one. Every
// sidecar must then be connected again, to the other replica or to the
// restarted one, and hold its whole config.
func (s *seed) killMeshd(ctx context.Context, stop <-chan struct{}) {
	select {
	case <-stop:
		return
	case <-ctx.Done():
		return
	case <-time.After(s.opts.Duration / 3):
	}
	victim, most := s.replicas[0], -1
	for _, r := range s.replicas {
		var v struct{ Proxies []json.RawMessage }
		if getJSON(ctx, r.debugURL+"/debug/proxies", &v) == nil && len(v.Proxies) > most {
			victim, most = r, len(v.Proxies)
		}
	}
	victim.proc.Kill()
	s.progress("fault: %s killed (SIGKILL) while serving %d of the sidecars' streams", victim.name, most)
	if len(s.replicas) == 1 {
		time.Sleep(2 * time.Second)
		if err := s.runReplica(ctx, victim); err != nil {
			s.progress("fault: restart %s: %v", victim.name, err)
			return
		}
		s.meshd = victim.proc
		s.progress("fault: %s restarted", victim.name)
	}
	err := waitFor(ctx, 60*time.Second, "every sidecar reconnected and synced", s.allAcked)
	s.mu.Lock()
	s.res.Reconnected = err == nil
	s.mu.Unlock()
	if err != nil {
		s.progress("fault: %v", err)
	} else {
		s.progress("fault: every sidecar reconnected and ACKed its config again")
	}
}

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/meshd/meshd/internal/netlab"
)

// IdentityResult is what the identity-enforcement experiment observed.
type IdentityResult struct {
	// Mode is web-0's mode (STRICT or PERMISSIVE).
	Mode string
	// LegacyOK: a pod outside the mesh (no sidecar) got the page from
	// web-0 directly (plaintext); LegacyError is what it saw otherwise.
	LegacyOK    bool
	LegacyError string
	// Through the service, whose EndpointSlice also lists an impostor's
	// address as web-0 (a forged endpoint): how many of the client's
	// requests succeeded, how many failed, how many reached the impostor's
	// app, and the client sidecar's count of server SAN mismatches.
	Requests, Failures, ImpostorServed int
	SANFailures                        int64
}

// identityYAML: web-0 (its mode from %[6]s), client-0, an impostor in the
// mesh under another service account whose address the web EndpointSlice
// lists as if it were web-0, and legacy-0 outside the mesh.
const identityYAML = `apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {meshd.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: %[1]s
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [%[2]s]
  targetRef: {kind: Pod, namespace: demo, name: web-0}
- addresses: [%[5]s]
  targetRef: {kind: Pod, namespace: demo, name: web-0}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo, labels: {meshd.io/mtls-mode: %[6]s}}
spec:
  serviceAccountName: web
  containers: [{name: nginx, image: nginx, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: %[2]s}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: demo}
spec: {serviceAccountName: client}
status: {podIP: %[3]s}
---
apiVersion: v1
kind: Pod
metadata: {name: impostor-0, namespace: demo}
spec:
  serviceAccountName: impostor
  containers: [{name: nginx, image: nginx, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: %[5]s}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy-0, namespace: legacy}
status: {podIP: %[4]s}
`

// RunIdentity runs the identity-enforcement experiment with web-0 in the
// given mode ("STRICT" or "PERMISSIVE") and removes everything it made.
func RunIdentity(ctx context.Context, opts Options, mode string) (res *IdentityResult, err error) {
	s, pods, err := labSeed(ctx, opts, "web-0", "client-0", "legacy-0", "impostor-0")
	if err != nil {
		return nil, err
	}
	lab := s.lab
	defer func() {
		if cerr := lab.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	s.marker = "meshd-identity-page"
	res = &IdentityResult{Mode: mode}
	s.server, s.client = pods["web-0"], pods["client-0"]
	s.serviceIP = fmt.Sprintf("198.19.%d.10", lab.Index)
	for _, p := range []*netlab.Pod{pods["web-0"], pods["impostor-0"]} {
		if err := s.startNginxIn(ctx, p); err != nil {
			return nil, err
		}
	}
	desc := fmt.Sprintf(identityYAML, s.serviceIP, pods["web-0"].IP, pods["client-0"].IP, pods["legacy-0"].IP, pods["impostor-0"].IP, mode)
	if err := s.startMeshWith(ctx, desc, 3, []sidecarSpec{{pod: pods["web-0"], sa: "web"}, {pod: pods["client-0"], sa: "client"}, {pod: pods["impostor-0"], sa: "impostor"}}); err != nil {
		return nil, err
	}
	// A pod outside the mesh calls web-0 directly.
	out, lerr := pods["legacy-0"].Run(ctx, "curl", "-sS", "-m", "5", "http://"+pods["web-0"].IP.String()+":8080/")
	res.LegacyOK = lerr == nil && strings.Contains(out, s.marker)
	if lerr != nil {
		res.LegacyError = strings.TrimSpace(out)
	}
	// The client calls the service: web-0 or the forged endpoint.
	for range 12 {
		res.Requests++
		out, err := s.client.Run(ctx, "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://"+s.serviceIP+"/")
		if err != nil || !strings.HasSuffix(out, "200") {
			res.Failures++
		}
	}
	// (nginx's own readiness check comes from 127.0.0.1 before the sidecar
	// exists; the sidecar would forward from 127.0.0.1 too, but after it.)
	if b, err := os.ReadFile(filepath.Join(lab.Dir, "nginx-impostor-0", "access.log")); err == nil {
		res.ImpostorServed = max(strings.Count(string(b), "\n")-1, 0)
	}
	stats, _ := s.client.Run(ctx, "curl", "-s", "http://127.0.0.1:15000/stats?filter=outbound.80.web.demo.ssl.fail_verify_san")
	for _, line := range strings.Split(stats, "\n") {
		if _, v, ok := strings.Cut(line, ": "); ok && strings.Contains(line, "fail_verify_san") {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			res.SANFailures += n
		}
	}
	s.collectLogs()
	return res, nil
}

type sidecarSpec struct {
	pod *netlab.Pod
	sa  string
	// iptables are extra arguments of meshd iptables, as the injector
	// makes them of the pod's exclude annotations.
	iptables []string
}

// startMeshWith starts one meshd on a lab description and sidecars for the
// given pods, and waits until all of them have ACKed their config.
func (s *seed) startMeshWith(ctx context.Context, desc string, proxies int, sidecars []sidecarSpec) error {
	dir := filepath.Join(s.lab.Dir, "meshd")
	localDir, caDir := filepath.Join(dir, "mesh"), filepath.Join(dir, "ca")
	if err := os.MkdirAll(localDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(localDir, "lab.yaml"), []byte(desc), 0o644); err != nil {
		return err
	}
	s.caDir = caDir
	r, err := s.startReplica(ctx, 0, localDir, caDir)
	if err != nil {
		return err
	}
	s.replicas = []*replica{r}
	s.meshd, s.debugURL, s.xdsAddr = r.proc, r.debugURL, r.xdsAddr
	s.envoys = map[string]*netlab.Proc{}
	for _, sc := range sidecars {
		if err := s.addSidecar(ctx, sc.pod, sc.sa, caDir, s.xdsAddr, sc.iptables...); err != nil {
			return err
		}
	}
	s.wantProxies = proxies
	return waitFor(ctx, 60*time.Second, "the sidecars ACKing their config", s.allAcked)
}

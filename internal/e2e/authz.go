package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshd/meshd/internal/netlab"
)

// The authorization experiment: web-0 serves HTTP on 8080 (service port 80)
// and the same nginx on 9090 as a TCP port (service port 90); client-0
// (service account client) and other-0 (service account other) call it
// through their sidecars while AuthorizationPolicies come and go in meshd's
// local dir (in the pods' namespace, and in meshd's own: the root
// namespace, whose policies apply to every namespace).

// AuthzOutcome is what one caller got on one port in one phase: "200",
// "403", or "closed" (the connection ended without an answer).
type AuthzOutcome struct {
	Phase, Caller, Port, Got string
}

// AuthzResult is what the authorization experiment observed.
type AuthzResult struct {
	Outcomes []AuthzOutcome
	// Under traffic: client-0's requests (HTTP and TCP, alternating) while
	// the policies that allow it were added and removed Flips times.
	Requests, Failures int
	FirstFailures      []string
	Flips              int
	// Convergence is, per flip, the time from writing the policy file to
	// web-0's sidecar running the new inbound listener (includes the local
	// dir's 1 s poll).
	Convergence []time.Duration
	// RBACInConfigDump: web-0's config_dump showed the RBAC filters with the
	// policies' rule names.
	RBACInConfigDump bool
	// AuthzLog are the "[meshd authz]" lines of web-0's sidecar.
	AuthzLog []string
	// Stats are web-0's RBAC counters (name: value).
	Stats map[string]int64
	// PlaintextSeen: tcpdump on the bridge saw the page or nginx's headers
	// in clear during the phases and the traffic.
	PlaintextSeen bool
	// Explain is meshd explain's output per caller, in the DENY phase.
	Explain   map[string]string
	MeshdLog  string
	EnvoyLogs map[string]string
}

const authzYAML = `apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {meshd.io/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: %[1]s
  ports: [{name: http, port: 80, targetPort: 8080}, {name: tcp, port: 90, targetPort: 9090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: tcp, port: 9090}]
endpoints:
- addresses: [%[2]s]
  targetRef: {kind: Pod, namespace: demo, name: web-0}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo, labels: {app: web}}
spec:
  serviceAccountName: web
  containers: [{name: nginx, image: nginx, ports: [{name: http, containerPort: 8080}, {name: tcp, containerPort: 9090}]}]
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
metadata: {name: other-0, namespace: demo}
spec: {serviceAccountName: other}
status: {podIP: %[4]s}
`

// Policies of the experiment.
const (
	allowClient = `apiVersion: meshd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-callers, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: {serviceAccounts: [demo/client]}
`
	denyClient = `apiVersion: meshd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-client, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  dryRun: %v
  rules:
  - from: {identities: [spiffe://cluster.local/ns/demo/sa/client]}
`
	// rootDenyOther is written in meshd's own namespace, the root
	// namespace by default: it applies to the pods of every namespace.
	rootDenyOther = `apiVersion: meshd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-other, namespace: meshd-system}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - from: {serviceAccounts: [demo/other]}
`
)

// authzPhase is a set of policies, and what web-0's sidecar must (want)
// and must not (notWant) hold in its active inbound listener and routes
// once it runs them.
type authzPhase struct {
	name          string
	policies      []string
	want, notWant []string
}

const (
	ruleAllow  = `"demo/web-callers/rule-0"`
	ruleDeny   = `"demo/no-client/rule-0"`
	shadowRule = `"shadow_rules"`
	ruleRoot   = `"meshd-system/no-other/rule-0"`
)

// RunAuthz runs the authorization experiment and removes everything it
// made.
func RunAuthz(ctx context.Context, opts Options) (res *AuthzResult, err error) {
	s, pods, err := labSeed(ctx, opts, "web-0", "client-0", "other-0")
	if err != nil {
		return nil, err
	}
	lab := s.lab
	defer func() {
		if cerr := lab.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	s.marker, s.nginxPorts = "meshd-authz-page", []int{9090}
	res = &AuthzResult{Stats: map[string]int64{}, Explain: map[string]string{}}
	defer func() {
		s.collectLogs()
		res.MeshdLog, res.EnvoyLogs = s.res.MeshdLog, s.res.EnvoyLogs
	}()
	s.server, s.client = pods["web-0"], pods["client-0"]
	s.serviceIP = fmt.Sprintf("198.19.%d.10", lab.Index)
	if err := s.startNginxIn(ctx, s.server); err != nil {
		return res, err
	}
	desc := fmt.Sprintf(authzYAML, s.serviceIP, pods["web-0"].IP, pods["client-0"].IP, pods["other-0"].IP)
	if err := s.startMeshWith(ctx, desc, 3, []sidecarSpec{{pod: pods["web-0"], sa: "web"}, {pod: pods["client-0"], sa: "client"}, {pod: pods["other-0"], sa: "other"}}); err != nil {
		return res, err
	}
	a := &authzRun{s: s, res: res, pods: pods, dir: filepath.Join(lab.Dir, "meshd", "mesh")}
	capture, err := lab.Capture(ctx, "bridge")
	if err != nil {
		return res, err
	}
	if err := a.phases(ctx); err != nil {
		return res, err
	}
	if err := a.underTraffic(ctx); err != nil {
		return res, err
	}
	pcap, err := capture.Stop()
	if err != nil {
		return res, err
	}
	res.PlaintextSeen = strings.Contains(string(pcap), s.marker) || strings.Contains(string(pcap), "Server: nginx")
	a.observe(ctx)
	return res, nil
}

type authzRun struct {
	s    *seed
	res  *AuthzResult
	pods map[string]*netlab.Pod
	dir  string
}

// phases applies each policy set and records what each caller gets.
func (a *authzRun) phases(ctx context.Context) error {
	for _, ph := range []authzPhase{
		{name: "none", notWant: []string{ruleAllow, ruleDeny}},
		{name: "allow", policies: []string{allowClient}, want: []string{ruleAllow}, notWant: []string{ruleDeny}},
		{name: "deny-over-allow", policies: []string{allowClient, fmt.Sprintf(denyClient, false)}, want: []string{ruleAllow, ruleDeny}, notWant: []string{shadowRule}},
		{name: "dry-run-deny", policies: []string{allowClient, fmt.Sprintf(denyClient, true)}, want: []string{ruleAllow, ruleDeny, shadowRule}},
		{name: "mesh-wide-deny", policies: []string{rootDenyOther}, want: []string{ruleRoot}, notWant: []string{ruleAllow, ruleDeny}},
	} {
		if _, err := a.apply(ctx, ph); err != nil {
			return err
		}
		for _, caller := range []string{"client-0", "other-0"} {
			for _, port := range []string{"http", "tcp"} {
				a.res.Outcomes = append(a.res.Outcomes, AuthzOutcome{Phase: ph.name, Caller: caller, Port: port, Got: a.call(ctx, caller, port)})
			}
		}
		if ph.name == "deny-over-allow" {
			a.explain(ctx)
			a.res.RBACInConfigDump = a.inboundHas(ctx, ph) == nil
		}
		a.s.progress("authz: phase %s done", ph.name)
	}
	return nil
}

// apply writes the phase's policies into the local dir and waits until
// web-0's sidecar runs an inbound listener with exactly its rules; it
// returns how long that took.
func (a *authzRun) apply(ctx context.Context, ph authzPhase) (time.Duration, error) {
	start := time.Now()
	body := strings.Join(ph.policies, "---\n")
	if err := os.WriteFile(filepath.Join(a.dir, "policies.yaml"), []byte(body), 0o644); err != nil {
		return 0, err
	}
	err := waitFor(ctx, 30*time.Second, "web-0's inbound listener with the rules of phase "+ph.name, func() error {
		if err := a.inboundHas(ctx, ph); err != nil {
			return err
		}
		return a.s.allAcked()
	})
	return time.Since(start), err
}

// inboundHas checks web-0's config_dump: no listener warming, and the
// active inbound listener and the dynamic routes together hold what the
// phase wants and nothing it does not; with policies, the listener has
// network RBAC filters and the routes HTTP RBAC per-route configuration.
func (a *authzRun) inboundHas(ctx context.Context, ph authzPhase) error {
	out, err := a.pods["web-0"].Run(ctx, "curl", "-sS", "-m", "5", "http://127.0.0.1:15000/config_dump")
	if err != nil {
		return err
	}
	var dump struct {
		Configs []struct {
			DynamicListeners []struct {
				Name         string          `json:"name"`
				ActiveState  json.RawMessage `json:"active_state"`
				WarmingState json.RawMessage `json:"warming_state"`
			} `json:"dynamic_listeners"`
			DynamicRoutes []json.RawMessage `json:"dynamic_route_configs"`
		} `json:"configs"`
	}
	if err := json.Unmarshal([]byte(out), &dump); err != nil {
		return fmt.Errorf("config_dump: %w", err)
	}
	var active strings.Builder
	for _, c := range dump.Configs {
		for _, l := range c.DynamicListeners {
			if len(l.WarmingState) > 0 {
				return fmt.Errorf("listener %s still warming", l.Name)
			}
			if l.Name == "inbound" {
				active.Write(l.ActiveState)
			}
		}
		for _, r := range c.DynamicRoutes {
			active.Write(r)
		}
	}
	got := active.String()
	for _, w := range ph.want {
		if !strings.Contains(got, w) {
			return fmt.Errorf("phase %s: %s not in web-0's inbound listener and routes", ph.name, w)
		}
	}
	for _, w := range ph.notWant {
		if strings.Contains(got, w) {
			return fmt.Errorf("phase %s: %s still in web-0's inbound listener or routes", ph.name, w)
		}
	}
	if len(ph.want) > 0 && (!strings.Contains(got, "envoy.extensions.filters.network.rbac.v3.RBAC") || !strings.Contains(got, "envoy.extensions.filters.http.rbac.v3.RBACPerRoute")) {
		return fmt.Errorf("no network RBAC filter in the inbound listener or no per-route HTTP RBAC in its routes")
	}
	return nil
}

// call is one request of caller to web's port (http: 80, tcp: 90), as the
// app sends it.
func (a *authzRun) call(ctx context.Context, caller, port string) string {
	addr := a.s.serviceIP
	if port == "tcp" {
		addr += ":90"
	}
	out, err := a.pods[caller].Run(ctx, "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://"+addr+"/")
	if err != nil {
		return "closed"
	}
	return strings.TrimSpace(out)
}

// underTraffic adds and removes the policies that let client-0 in (and
// keep other-0 out) while client-0 calls web without pause.
func (a *authzRun) underTraffic(ctx context.Context) error {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			port := []string{"http", "tcp"}[i%2]
			got := a.call(ctx, "client-0", port)
			mu.Lock()
			a.res.Requests++
			if got != "200" {
				a.res.Failures++
				if len(a.res.FirstFailures) < 5 {
					a.res.FirstFailures = append(a.res.FirstFailures, fmt.Sprintf("%s %s: %s", time.Now().Format("15:04:05.000"), port, got))
				}
			}
			mu.Unlock()
		}
	}()
	var err error
	for i := 0; i < 6 && err == nil; i++ {
		ph := authzPhase{name: "traffic-none", notWant: []string{ruleAllow, ruleDeny}}
		if i%2 == 0 {
			ph = authzPhase{name: "traffic-allow", policies: []string{allowClient}, want: []string{ruleAllow}, notWant: []string{ruleDeny}}
		}
		var took time.Duration
		if took, err = a.apply(ctx, ph); err == nil {
			a.res.Flips++
			a.res.Convergence = append(a.res.Convergence, took)
			time.Sleep(500 * time.Millisecond)
		}
	}
	close(stop)
	wg.Wait()
	a.s.progress("authz: under traffic: %d requests, %d failed, %d flips", a.res.Requests, a.res.Failures, a.res.Flips)
	return err
}

// explain asks meshd why each caller may or may not call web.
func (a *authzRun) explain(ctx context.Context) {
	addr := strings.TrimPrefix(a.s.debugURL, "http://")
	for _, caller := range []string{"client-0", "other-0"} {
		out, err := runCmd(ctx, a.s.opts.Meshd, "explain", "--from", caller+".demo", "--to", "web.demo", "--debug-addr", addr)
		text := string(out)
		if err != nil {
			text += err.Error()
		}
		a.res.Explain[caller] = text
	}
}

// observe collects web-0's authorization log lines and RBAC counters.
func (a *authzRun) observe(ctx context.Context) {
	for _, line := range strings.Split(a.s.envoys["web-0"].Log(), "\n") {
		if strings.Contains(line, "[meshd authz]") {
			a.res.AuthzLog = append(a.res.AuthzLog, line)
		}
	}
	stats, _ := a.pods["web-0"].Run(ctx, "curl", "-s", "http://127.0.0.1:15000/stats?filter=rbac")
	for _, line := range strings.Split(stats, "\n") {
		if name, v, ok := strings.Cut(line, ": "); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				a.res.Stats[name] = n
			}
		}
	}
}

package e2e

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/meshd/meshd/internal/netlab"
)

//go:embed apps.py
var appsPy []byte

// AppsResult is what the workloads experiment observed: an app other than
// nginx (apps.py) behind a sidecar, called by a meshed client and by a pod
// outside the mesh. Each field holds the client's own report (apps.py dial
// or curl output).
type AppsResult struct {
	Mode string
	// SourceSeen is the address the HTTP app saw the meshed client's
	// request come from.
	SourceSeen string
	// LoopbackFromPod is the loopback-only app answering inside its own
	// pod (it runs); LoopbackFromClient and LoopbackFromLegacy are what the
	// meshed client (through the service) and the outsider (to the pod IP)
	// got from it.
	LoopbackFromPod, LoopbackFromClient, LoopbackFromLegacy string
	// BannerFromClient and BannerFromLegacy are what a silent client of
	// the server-first port got: the meshed one through the service, the
	// outsider at the pod IP.
	BannerFromClient, BannerFromLegacy string
	// PlainFromLegacy is the outsider's plain HTTP call to the pod IP.
	PlainFromLegacy string
	// WebSocketFromClient and WebSocketFromLegacy are what a WebSocket
	// client (apps.py ws: the handshake's status, the accept key checked,
	// the app's answers to two messages) got on the HTTP port: the meshed
	// one through the service, the outsider at the pod IP.
	WebSocketFromClient, WebSocketFromLegacy string
	// GRPCFromClient and GRPCFromLegacy are what a gRPC client (Options.
	// GRPCHelper check: a unary call and a server stream of the health
	// service) got from app-0's gRPC port: the meshed one through the
	// service, the outsider at the pod IP. Empty without a helper.
	GRPCFromClient, GRPCFromLegacy string
	// GRPCOnHTTPPort is the meshed client's gRPC call through the service
	// port http-grpc (9091: named HTTP, the app speaking gRPC, HTTP/2
	// without TLS); empty without a helper.
	GRPCOnHTTPPort string
	// WebSocketOnH2C is the meshed client's WebSocket through the service
	// port web (8083, appProtocol kubernetes.io/h2c: the app speaks both
	// HTTP/1.1 and HTTP/2), as WebSocketFromClient.
	WebSocketOnH2C string
	// UndeclaredFromLegacy is what the outsider got from app-0's port 7070,
	// which no Service or container declares, at the pod IP.
	UndeclaredFromLegacy string
	// BypassFromClient and BypassFromLegacy are what the meshed client
	// (through the service) and the outsider (at the pod IP) got from
	// app-0's port 7071, which its annotation meshd.io/exclude-inbound-ports
	// takes out of the interception.
	BypassFromClient, BypassFromLegacy string
	// SelfPorts is what the outsider got from the sidecar's own ports,
	// 15001 and 15006, at the pod's address (not redirected: the
	// connections reach the listeners as they are).
	SelfPorts [2]string
	// EnvoyHeadersFromClient and EnvoyHeadersFromLegacy are the status a
	// caller got for a request to a path that always answers 503, sent
	// with x-envoy-retry-on: 5xx and x-envoy-max-retries: 3, and how many
	// requests reached the app for it ("code=503 flaky=N"): the meshed
	// client through the service, the outsider at the pod IP.
	EnvoyHeadersFromClient, EnvoyHeadersFromLegacy string
	// StickyHTTP, StickyTCP, SpreadHTTP and SpreadTCP count which server
	// (app-0, app-1) answered each of the meshed client's 12 requests and
	// 12 connections to the services sticky (sessionAffinity ClientIP)
	// and spread, as fmt prints a map ("map[app-0:12]").
	StickyHTTP, StickyTCP, SpreadHTTP, SpreadTCP string
	// NodeLocalHTTP and NodeLocalTCP are the same for the service
	// nodelocal (internalTrafficPolicy Local; client-0 and app-1 on node
	// n2, app-0 on n1).
	NodeLocalHTTP, NodeLocalTCP string
	// ZonalHTTP and ZonalTCP are the same for the service zonal
	// (trafficDistribution PreferClose; its endpoints hinted for their
	// zones: app-0 zone-a, app-1 zone-b; client-0 in zone-a).
	ZonalHTTP, ZonalTCP string
	// SameNodeHTTP and SameNodeTCP are the same for the service samenode
	// (trafficDistribution PreferSameNode: hinted for their nodes and
	// zones; client-0 on n2, where app-1 is, in zone-a, where app-0 is).
	SameNodeHTTP, SameNodeTCP string
	// DrainingHTTP and DrainingTCP are the same for the service draining,
	// none of whose endpoints is ready: app-0 terminating but still
	// serving, app-1 terminating and not serving.
	DrainingHTTP, DrainingTCP string
	// OutsideFromClient and OutsideFromRegistryOnly are what the meshed
	// client (outbound traffic allow-any) and app-1 (registry-only) got
	// from a server outside the mesh (apps.py on legacy-0, at its
	// address); ServiceFromRegistryOnly what app-1 got from the service.
	OutsideFromClient, OutsideFromRegistryOnly, ServiceFromRegistryOnly string
	// ServerHeader is the Server header of the app's answer to the meshed
	// client.
	ServerHeader string
	// EnvoyHeaders are the x-envoy-* headers of a meshed client's request
	// through the service as the app got them, and of the answer as the
	// client got it: "request=<names> response=<names>".
	EnvoyHeaders string
	// Upload is the app's answer to the meshed client's 3 MiB POST.
	Upload string
	// HalfClose is what the meshed client got through the service from a
	// server that answers once the client has closed its sending side.
	HalfClose string
	// ClientIP is the meshed client's address.
	ClientIP string
	// SelfCall is app-0 calling its own service, whose one endpoint it
	// is (curl in its pod, as its app would).
	SelfCall string
	// HTTP10FromClient is the meshed client's HTTP/1.0 request through
	// the service (curl -0), as curl reports it.
	HTTP10FromClient string
	// Held is how a busy TCP connection of the meshed client to the banner
	// port ended (apps.py hold), when the experiment was asked to hold one.
	Held string
	// ClientSockets and ServerSockets are the established TCP sockets in
	// client-0's and app-0's pods while the connection is held (ss -tno).
	ClientSockets, ServerSockets string
	// ServerLog is the end of the server sidecar's log (access lines
	// included); refused are all its "[meshd refused]" lines.
	ServerLog string
	refused   []string
	// LegacyIP is the outsider's address.
	LegacyIP string
}

// appsYAML: app-0 (apps.py) in the mesh with the mode from %[5]s and a 1 s
// detection timeout, its service (the banner port declared server-first by
// appProtocol), client-0 in the mesh, legacy-0 outside it (apps.py too);
// app-1 (apps.py too, for the services of overBoth; its outbound traffic
// registry-only). app-0 runs on node n1, app-1 and
// client-0 on n2.
const appsYAML = `apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {meshd.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: demo}
spec:
  clusterIP: %[1]s
  ports:
  - {name: http, port: 8080}
  - {name: tcp-loopback, port: 8081}
  - {name: banner, port: 2525, appProtocol: smtp}
  - {name: grpc, port: 9090}
  - {name: tcp-bypass, port: 7071}
  - {name: tcp-eof, port: 7072}
  - {name: http-grpc, port: 9091}
  - {name: web, port: 8083, appProtocol: kubernetes.io/h2c}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: app-1, namespace: demo, labels: {kubernetes.io/service-name: app}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: tcp-loopback, port: 8081}, {name: banner, port: 2525}, {name: grpc, port: 9090}, {name: tcp-bypass, port: 7071}, {name: tcp-eof, port: 7072}, {name: http-grpc, port: 9091}, {name: web, port: 8083}]
endpoints:
- addresses: [%[2]s]
  targetRef: {kind: Pod, namespace: demo, name: app-0}
---
apiVersion: v1
kind: Pod
metadata:
  name: app-0
  namespace: demo
  labels: {meshd.io/mtls-mode: %[5]s}
  annotations: {meshd.io/protocol-detection-timeout: 1s, meshd.io/exclude-inbound-ports: "7071"}
spec:
  serviceAccountName: app
  nodeName: n1
  containers: [{name: app, image: apps}]
status: {podIP: %[2]s}
---
apiVersion: v1
kind: Pod
metadata: {name: app-1, namespace: demo, annotations: {meshd.io/outbound-traffic: registry-only}}
spec:
  serviceAccountName: app
  nodeName: n2
  containers: [{name: app, image: apps}]
status: {podIP: %[6]s}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: demo, labels: {topology.kubernetes.io/zone: zone-a}}
spec: {serviceAccountName: client, nodeName: n2}
status: {podIP: %[3]s}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy-0, namespace: legacy}
status: {podIP: %[4]s}
`

// RunApps runs the workloads experiment with app-0 in the given mode
// ("STRICT" or "PERMISSIVE") and removes everything it made. With hold > 0
// the meshed client also keeps a busy TCP connection open for up to hold.
func RunApps(ctx context.Context, opts Options, mode string, hold time.Duration) (res *AppsResult, err error) {
	python, err := exec.LookPath("python3")
	if err != nil {
		return nil, err
	}
	s, pods, err := labSeed(ctx, opts, "app-0", "client-0", "legacy-0", "app-1")
	if err != nil {
		return nil, err
	}
	lab := s.lab
	defer func() {
		if cerr := lab.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	script := filepath.Join(lab.Dir, "apps.py")
	if err := os.WriteFile(script, appsPy, 0o644); err != nil {
		return nil, err
	}
	app, err := lab.Start("apps-app-0", netlab.ProcOptions{Pod: pods["app-0"]}, python, script, "serve", "app-0")
	if err != nil {
		return nil, err
	}
	app1, err := lab.Start("apps-app-1", netlab.ProcOptions{Pod: pods["app-1"]}, python, script, "serve", "app-1")
	if err != nil {
		return nil, err
	}
	// A server outside the mesh (legacy-0 is no service's endpoint).
	outside, err := lab.Start("apps-legacy-0", netlab.ProcOptions{Pod: pods["legacy-0"]}, python, script, "serve", "legacy-0")
	if err != nil {
		return nil, err
	}
	if opts.GRPCHelper != "" {
		if _, err := lab.Start("grpc-app-0", netlab.ProcOptions{Pod: pods["app-0"]}, opts.GRPCHelper, "grpc-helper", "serve", "0.0.0.0:9090"); err != nil {
			return nil, err
		}
		if _, err := lab.Start("grpc-app-0-http", netlab.ProcOptions{Pod: pods["app-0"]}, opts.GRPCHelper, "grpc-helper", "serve", "0.0.0.0:9091"); err != nil {
			return nil, err
		}
	}
	if err := waitFor(ctx, 10*time.Second, "apps.py serving", func() error {
		if !strings.Contains(app.Log(), "serving") || !strings.Contains(app1.Log(), "serving") || !strings.Contains(outside.Log(), "serving") {
			return fmt.Errorf("not yet: %s / %s / %s", app.Log(), app1.Log(), outside.Log())
		}
		return nil
	}); err != nil {
		return nil, err
	}
	svcIP := fmt.Sprintf("198.19.%d.10", lab.Index)
	appIP := pods["app-0"].IP.String()
	stickyIP, spreadIP, localIP := fmt.Sprintf("198.19.%d.11", lab.Index), fmt.Sprintf("198.19.%d.12", lab.Index), fmt.Sprintf("198.19.%d.13", lab.Index)
	zonalIP, sameNodeIP, drainingIP := fmt.Sprintf("198.19.%d.14", lab.Index), fmt.Sprintf("198.19.%d.15", lab.Index), fmt.Sprintf("198.19.%d.16", lab.Index)
	app1IP := pods["app-1"].IP.String()
	desc := fmt.Sprintf(appsYAML, svcIP, appIP, pods["client-0"].IP, pods["legacy-0"].IP, mode, app1IP) +
		overBoth("sticky", stickyIP, "sessionAffinity: ClientIP", appIP, app1IP) + overBoth("spread", spreadIP, "sessionAffinity: None", appIP, app1IP) +
		overBoth("nodelocal", localIP, "internalTrafficPolicy: Local", appIP, app1IP) +
		overBoth("zonal", zonalIP, "trafficDistribution: PreferClose", appIP, app1IP) +
		overBoth("samenode", sameNodeIP, "trafficDistribution: PreferSameNode", appIP, app1IP) +
		overBoth("draining", drainingIP, terminatingSpec, appIP, app1IP)
	// app-0's iptables as the injector makes them of its annotation.
	bypass := []string{"--exclude-inbound-ports", "15021,7071"}
	if err := s.startMeshWith(ctx, desc, 3, []sidecarSpec{{pod: pods["app-0"], sa: "app", iptables: bypass}, {pod: pods["client-0"], sa: "client"},
		{pod: pods["app-1"], sa: "app"}}); err != nil {
		return nil, err
	}
	dial := func(pod, host, port string, line ...string) string {
		out, err := pods[pod].Run(ctx, python, append([]string{script, "dial", host, port}, line...)...)
		if err != nil {
			return fmt.Sprintf("%s (%v)", strings.TrimSpace(out), err)
		}
		return strings.TrimSpace(out)
	}
	res = &AppsResult{Mode: mode, LegacyIP: pods["legacy-0"].IP.String(), ClientIP: pods["client-0"].IP.String()}
	out, _ := pods["client-0"].Run(ctx, "curl", "-sS", "-m", "5", "http://"+svcIP+":8080/")
	res.SourceSeen = strings.TrimPrefix(strings.TrimSpace(out), "peer=")
	res.LoopbackFromPod = dial("app-0", "127.0.0.1", "8081", "hello")
	res.LoopbackFromClient = dial("client-0", svcIP, "8081", "hello")
	res.LoopbackFromLegacy = dial("legacy-0", appIP, "8081", "hello")
	res.BannerFromClient = dial("client-0", svcIP, "2525")
	res.BannerFromLegacy = dial("legacy-0", appIP, "2525")
	res.UndeclaredFromLegacy = dial("legacy-0", appIP, "7070", "hello")
	// Before the calls below: a sidecar looping on these would fail them.
	res.SelfPorts = [2]string{dial("legacy-0", appIP, "15001", "x"), dial("legacy-0", appIP, "15006", "x")}
	// A 3 MiB upload (curl sends Expect: 100-continue first), larger than
	// what Envoy buffers for a retry.
	upload := filepath.Join(lab.Dir, "upload.bin")
	if err := os.WriteFile(upload, make([]byte, 3<<20), 0o644); err != nil {
		return nil, err
	}
	out, _ = pods["client-0"].Run(ctx, "curl", "-sS", "-m", "10", "--data-binary", "@"+upload, "http://"+svcIP+":8080/upload")
	res.Upload = strings.TrimSpace(out)
	out, _ = pods["client-0"].Run(ctx, python, script, "halfclose", svcIP, "7072", "request then EOF")
	res.HalfClose = strings.TrimSpace(out)
	res.BypassFromClient = dial("client-0", svcIP, "7071", "hello")
	res.BypassFromLegacy = dial("legacy-0", appIP, "7071", "hello")
	out, _ = pods["legacy-0"].Run(ctx, "curl", "-sS", "-m", "5", "http://"+appIP+":8080/")
	res.PlainFromLegacy = strings.TrimSpace(out)
	ws := func(pod, host string) string {
		out, err := pods[pod].Run(ctx, python, script, "ws", host, "8080", "hello", "again")
		if err != nil {
			return fmt.Sprintf("%s (%v)", strings.TrimSpace(out), err)
		}
		return strings.TrimSpace(out)
	}
	res.WebSocketFromClient = ws("client-0", svcIP)
	res.WebSocketFromLegacy = ws("legacy-0", appIP)
	out, err = pods["client-0"].Run(ctx, python, script, "ws", svcIP, "8083", "hello", "again")
	res.WebSocketOnH2C = strings.TrimSpace(out)
	if err != nil {
		res.WebSocketOnH2C += fmt.Sprintf(" (%v)", err)
	}
	out, _ = pods["client-0"].Run(ctx, "curl", "-sS", "-0", "-m", "5", "-w", " code=%{http_code} version=%{http_version}", "http://"+svcIP+":8080/")
	res.HTTP10FromClient = strings.TrimSpace(out)
	out, _ = pods["app-0"].Run(ctx, "curl", "-sS", "-m", "5", "http://"+svcIP+":8080/")
	res.SelfCall = strings.TrimSpace(out)
	out, _ = pods["client-0"].Run(ctx, "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%header{server}", "http://"+svcIP+":8080/")
	res.ServerHeader = strings.TrimSpace(out)
	out, _ = pods["client-0"].Run(ctx, "curl", "-sS", "-m", "5", "-D", "-", "http://"+svcIP+":8080/envoy-headers")
	res.EnvoyHeaders = envoyHeaders(out)
	// A destination outside the mesh, from the meshed client (allow-any)
	// and from app-1 (registry-only); app-1 to a service of the mesh.
	legacyURL := "http://" + res.LegacyIP + ":8080/"
	out, _ = pods["client-0"].Run(ctx, "curl", "-sS", "-m", "5", legacyURL)
	res.OutsideFromClient = strings.TrimSpace(out)
	out, _ = pods["app-1"].Run(ctx, "curl", "-sS", "-m", "5", legacyURL)
	res.OutsideFromRegistryOnly = strings.TrimSpace(out)
	out, _ = pods["app-1"].Run(ctx, "curl", "-sS", "-m", "5", "http://"+svcIP+":8080/")
	res.ServiceFromRegistryOnly = strings.TrimSpace(out)
	// Which servers answer 12 requests (HTTP, each on a new connection)
	// and 12 connections (TCP) of the meshed client to each service.
	servers := func(get func() string) string {
		seen := map[string]int{}
		for range 12 {
			out := get()
			if m := serverRE.FindStringSubmatch(out); m != nil {
				seen[m[1]]++
			} else {
				seen["no answer: "+strings.TrimSpace(out)]++
			}
		}
		return fmt.Sprint(seen)
	}
	for _, c := range []struct {
		ip        string
		http, tcp *string
	}{{stickyIP, &res.StickyHTTP, &res.StickyTCP}, {spreadIP, &res.SpreadHTTP, &res.SpreadTCP}, {localIP, &res.NodeLocalHTTP, &res.NodeLocalTCP},
		{zonalIP, &res.ZonalHTTP, &res.ZonalTCP}, {sameNodeIP, &res.SameNodeHTTP, &res.SameNodeTCP},
		{drainingIP, &res.DrainingHTTP, &res.DrainingTCP}} {
		*c.http = servers(func() string {
			out, _ := pods["client-0"].Run(ctx, "curl", "-sS", "-m", "5", "http://"+c.ip+":8080/whoami")
			return out
		})
		*c.tcp = servers(func() string {
			out, _ := pods["client-0"].Run(ctx, python, script, "dial", c.ip, "7073")
			return out
		})
	}
	// A caller asking, in Envoy's own headers, for retries of a 503 (and
	// no timeout): what reached the app.
	for pod, into := range map[string]*string{"client-0": &res.EnvoyHeadersFromClient, "legacy-0": &res.EnvoyHeadersFromLegacy} {
		host := svcIP
		if pod == "legacy-0" {
			host = appIP
		}
		code, _ := pods[pod].Run(ctx, "curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "-H", "x-envoy-retry-on: 5xx",
			"-H", "x-envoy-max-retries: 3", "-H", "x-envoy-upstream-rq-timeout-ms: 0", "http://"+host+":8080/flaky")
		count, _ := pods["app-0"].Run(ctx, "curl", "-sS", "-m", "5", "http://127.0.0.1:8080/flaky-count")
		*into = fmt.Sprintf("code=%s %s", strings.TrimSpace(code), strings.TrimSpace(count))
	}
	if opts.GRPCHelper != "" {
		for pod, into := range map[string]*string{"client-0": &res.GRPCFromClient, "legacy-0": &res.GRPCFromLegacy} {
			host := svcIP
			if pod == "legacy-0" {
				host = appIP
			}
			out, err := pods[pod].Run(ctx, opts.GRPCHelper, "grpc-helper", "check", host+":9090", "app")
			*into = strings.TrimSpace(out)
			if err != nil {
				*into += fmt.Sprintf(" (%v)", err)
			}
		}
		out, err := pods["client-0"].Run(ctx, opts.GRPCHelper, "grpc-helper", "check", svcIP+":9091", "app")
		res.GRPCOnHTTPPort = strings.TrimSpace(out)
		if err != nil {
			res.GRPCOnHTTPPort += fmt.Sprintf(" (%v)", err)
		}
	}
	if hold > 0 {
		done := make(chan struct{})
		go func() {
			defer close(done)
			out, err := pods["client-0"].Run(ctx, python, script, "hold", svcIP, "2525", fmt.Sprint(hold.Seconds()))
			res.Held = strings.TrimSpace(out)
			if err != nil {
				res.Held += fmt.Sprintf(" (%v)", err)
			}
		}()
		// While it is held: the sidecars' sockets of the connection.
		time.Sleep(3 * time.Second)
		for pod, into := range map[string]*string{"client-0": &res.ClientSockets, "app-0": &res.ServerSockets} {
			out, err := pods[pod].Run(ctx, "ss", "-tnoH", "state", "established")
			*into = strings.TrimSpace(out)
			if err != nil {
				*into += fmt.Sprintf(" (%v)", err)
			}
		}
		<-done
	}
	time.Sleep(3 * time.Second) // access log lines are written when connections close, and flushed each second
	res.ServerLog = s.envoys["app-0"].LogTail(20000)
	res.refused = refusedRE.FindAllString(s.envoys["app-0"].Log(), -1) // all of them: the tail may have lost the first
	s.collectLogs()
	return res, nil
}

// overBoth is a service over app-0 (node n1) and app-1 (node n2), HTTP
// 8080 and TCP 7073, with the given spec line (sessionAffinity,
// internalTrafficPolicy, trafficDistribution). With trafficDistribution
// its endpoints carry the hints the EndpointSlice controller writes for
// it (app-0 for zone-a, app-1 for zone-b; PreferSameNode: also app-0 for
// n1, app-1 for n2), and only then: meshd reads the hints. With
// terminatingSpec neither endpoint is ready: app-0 is terminating but
// still serving, app-1 terminating and no longer serving.
func overBoth(name, ip, spec, app0, app1 string) string {
	var hint0, hint1 string
	switch spec {
	case "trafficDistribution: PreferClose":
		hint0 = "\n  zone: zone-a\n  hints: {forZones: [{name: zone-a}]}"
		hint1 = "\n  zone: zone-b\n  hints: {forZones: [{name: zone-b}]}"
	case terminatingSpec:
		hint0 = "\n  conditions: {ready: false, serving: true, terminating: true}"
		hint1 = "\n  conditions: {ready: false, serving: false, terminating: true}"
	case "trafficDistribution: PreferSameNode":
		hint0 = "\n  zone: zone-a\n  hints: {forZones: [{name: zone-a}], forNodes: [{name: n1}]}"
		hint1 = "\n  zone: zone-b\n  hints: {forZones: [{name: zone-b}], forNodes: [{name: n2}]}"
	}
	return fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: demo}
spec:
  clusterIP: %[2]s
  %[3]s
  ports: [{name: http, port: 8080}, {name: tcp-who, port: 7073}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[1]s-1, namespace: demo, labels: {kubernetes.io/service-name: %[1]s}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: tcp-who, port: 7073}]
endpoints:
- addresses: [%[4]s]
  nodeName: n1%[6]s
  targetRef: {kind: Pod, namespace: demo, name: app-0}
- addresses: [%[5]s]
  nodeName: n2%[7]s
  targetRef: {kind: Pod, namespace: demo, name: app-1}
`, name, ip, spec, app0, app1, hint0, hint1)
}

// envoyHeaders reads curl -D - output of /envoy-headers: the app's line
// (request=...) and the x-envoy-* names among the answer's headers.
func envoyHeaders(out string) string {
	var request string
	var response []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "request=") {
			request = l
		} else if name, _, ok := strings.Cut(l, ":"); ok && strings.HasPrefix(strings.ToLower(name), "x-envoy-") {
			response = append(response, strings.ToLower(name))
		}
	}
	if request == "" {
		return "no answer: " + out
	}
	return request + " response=" + strings.Join(response, ",")
}

// terminatingSpec is overBoth's spec line for a service whose pods are
// terminating (a YAML comment: the Service itself is as usual).
const terminatingSpec = "# pods terminating"

// serverRE finds the name of the apps.py that answered (/whoami, 7073).
var serverRE = regexp.MustCompile(`server=([a-z0-9-]+)`)

// refusedRE finds the server sidecar's "[meshd refused]" lines.
var refusedRE = regexp.MustCompile(`\[meshd refused\][^\n]*`)

// RefusedLines returns the server sidecar's "[meshd refused]" lines.
func (r *AppsResult) RefusedLines() []string { return r.refused }

package node

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/inject"
	"github.com/meshd/meshd/internal/pcap"
	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/k8s"
)

const (
	// certTTL is short so that the run sees several renewals.
	certTTL = time.Minute
	// rate of the client's requests, each on a new connection.
	rate = 25
	// minRun is how long the traffic runs at least (>= 5,000 requests).
	minRun = 4 * time.Minute
)

// TestRealNode is what a user does, on a real node: meshd deployed from
// deploy/base (two replicas, its RBAC, leader election, the webhook
// reached through its Service), a namespace labelled for injection, an
// nginx Deployment with HTTP readiness and liveness probes on its app port
// and a client calling http://web by its DNS name; then, under that
// traffic, scaling, a rolling update, a restart of meshd and certificate
// renewals, with an eavesdropper on the node's bridge.
func TestRealNode(t *testing.T) {
	needNode(t)
	c := startCluster(t)
	marker := "page-" + randomHex(8)
	c.buildImages(marker)
	// The node's apiserver serves pod certificates; this test is about the
	// per-pod Secrets (TestRealNodePodCertificates is about the other mode).
	c.deployMeshd("--cert-ttl="+certTTL.String(), "--pod-certificates=off")

	// The eavesdropper listens from the start: the workloads' first
	// handshakes are on the record too.
	stopCapture := pcap.Tcpdump(t, Bridge, 32, "tcp")
	server, client := workloads(marker)
	c.apply(server)
	waitReady(t, c, "shop", "app=web", 3)
	c.waitEndpoints("web", 3)
	c.apply(client)
	waitReady(t, c, "shop", "app=client", 1)
	start := time.Now()
	logf(t, "every pod Ready in STRICT mode, HTTP and TCP probes on the app port passing (the client's HTTP, TCP and gRPC ones on its pod IP alone); client calling http://web/ %d times a second", rate)

	time.Sleep(20 * time.Second)
	c.scale("web", 6)
	time.Sleep(10 * time.Second)
	c.scale("web", 2)
	time.Sleep(10 * time.Second)
	logf(t, "rolling update of web")
	c.mustKubectl("-n", "shop", "patch", "deployment/web", "-p", `{"spec":{"template":{"metadata":{"annotations":{"rollout":"`+randomHex(4)+`"}}}}}`)
	c.mustKubectl("-n", "shop", "rollout", "status", "deployment/web", "--timeout=180s")
	logf(t, "rolling update of web done")
	time.Sleep(10 * time.Second)
	logf(t, "kubectl rollout restart deployment/meshd")
	c.mustKubectl("-n", "meshd-system", "rollout", "restart", "deployment/meshd")
	c.mustKubectl("-n", "meshd-system", "rollout", "status", "deployment/meshd", "--timeout=180s")
	logf(t, "meshd rollout restart done")

	c.outsiderRefused(t)
	c.refusedAndSkipped(t)
	c.jobCompletes(t)
	c.deletedPodLosesCredentials(t)
	c.operatorsSeeEveryProxy(t)

	if rest := minRun - time.Since(start); rest > 0 {
		time.Sleep(rest)
	}
	ok, failed, failures := c.clientSummary()
	c.clientNeverRestarted(t)
	elapsed := time.Since(start)
	b := stopCapture()
	capt, err := pcap.Read(b)
	if err != nil {
		t.Fatal(err)
	}
	logf(t, "traffic for %s: %d requests ok, %d failed", elapsed.Round(time.Second), ok, failed)
	if failed != 0 {
		t.Errorf("%d requests failed:\n%s", failed, strings.Join(failures, "\n"))
	}
	if ok+failed < 5000 {
		t.Errorf("only %d requests made, want at least 5,000", ok+failed)
	}
	if capt.Contains(marker) {
		t.Errorf("the page (marker %s) crossed the bridge in clear", marker)
	}
	checkHandshakes(t, capt)
	c.checkRenewals(t)
}

// buildImages builds meshd's images from this tree and the test's
// workload images, and imports them into the node's containerd.
func (c *cluster) buildImages(marker string) {
	c.t.Helper()
	start := time.Now()
	c.must("bash", "hack/image.sh", "meshd", "proxy")
	dir := filepath.Join(c.t.TempDir(), "images")
	c.must("bash", "internal/node/testdata/images.sh", dir, marker)
	sock := filepath.Join(c.dir, "run", "containerd", "containerd.sock")
	for _, img := range []string{"web.tar", "client.tar"} {
		c.must("ctr", "--address", sock, "-n", "k8s.io", "images", "import", filepath.Join(dir, img))
	}
	c.bin = filepath.Join(c.t.TempDir(), "meshd")
	c.must("go", "build", "-o", c.bin, "./cmd/meshd")
	c.t.Logf("images built and imported in %s", time.Since(start).Round(time.Second))
}

// deployMeshd applies deploy/examples/webhook-auth (deploy/base with the
// webhook answering only the apiserver) through an overlay that only adds
// args to meshd's (e.g. a short certificate lifetime), and waits until
// injection works.
func (c *cluster) deployMeshd(args ...string) {
	c.t.Helper()
	overlay := filepath.Join(c.root, "out", "node-e2e-overlay")
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		c.t.Fatal(err)
	}
	kust := `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [../../deploy/examples/webhook-auth]
patches:
- target: {kind: Deployment, name: meshd}
  patch: |-
`
	for _, a := range args {
		kust += "    - op: add\n      path: /spec/template/spec/containers/0/args/-\n      value: " + a + "\n"
	}
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(kust), 0o644); err != nil {
		c.t.Fatal(err)
	}
	start := time.Now()
	c.mustKubectl("apply", "-k", overlay)
	c.mustKubectl("-n", "meshd-system", "rollout", "status", "deployment/meshd", "--timeout=180s")
	ctx := context.Background()
	waitUntil(c.t, 2*time.Minute, "the webhook's caBundle", func() error {
		mwc, err := c.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "meshd-sidecar-injector", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(mwc.Webhooks) == 0 || len(mwc.Webhooks[0].ClientConfig.CABundle) == 0 {
			return fmt.Errorf("no caBundle yet")
		}
		return nil
	})
	c.t.Logf("meshd deployed from deploy/base with webhook client authentication (2 replicas) in %s", time.Since(start).Round(time.Second))
}

// logf logs with the wall time, to line steps up with failures.
func logf(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf("%s "+format, append([]any{time.Now().UTC().Format("15:04:05.000")}, args...)...)
}

// waitEndpoints waits until the Service's EndpointSlices list n ready
// endpoints.
func (c *cluster) waitEndpoints(svc string, n int) {
	c.t.Helper()
	waitUntil(c.t, time.Minute, fmt.Sprintf("%d ready endpoints of %s", n, svc), func() error {
		slices, err := c.client.DiscoveryV1().EndpointSlices("shop").List(context.Background(), metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + svc})
		if err != nil {
			return err
		}
		ready := 0
		for _, s := range slices.Items {
			for _, e := range s.Endpoints {
				if e.Conditions.Ready != nil && *e.Conditions.Ready {
					ready++
				}
			}
		}
		if ready != n {
			return fmt.Errorf("%d ready", ready)
		}
		return nil
	})
}

// workloads: the meshed namespace, nginx with probes on its app port (HTTP
// ones the sidecar forwards, a tcpSocket one it checks itself) and its
// Service; and the client calling it by name, which answers HTTP, TCP and
// gRPC probes on its pod IP alone (the sidecar must reach it there). (The
// liveness probe asks /healthz, not the page: the kubelet's probes cross
// the bridge in plaintext, as they do without a mesh.)
func workloads(marker string) (server, client string) {
	return `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {meshd.io/inject: enabled}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      # A port out of the interception: the init container's rules take it.
      annotations: {meshd.io/exclude-inbound-ports: "9113"}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: nginx
        image: localhost/meshd-test/web:dev
        imagePullPolicy: Never
        ports: [{name: http, containerPort: 80}]
        readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /healthz, port: 80}, periodSeconds: 5}
        startupProbe: {tcpSocket: {port: http}, periodSeconds: 1, failureThreshold: 120}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
`, `apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      serviceAccountName: default
      containers:
      - name: client
        image: localhost/meshd-test/client:dev
        imagePullPolicy: Never
        args: [loop, "http://web/", "` + strconv.Itoa(rate) + `"]
        env:
        - {name: MARKER, value: "` + marker + `"}
        - {name: HEALTH_ADDR, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        ports: [{name: health, containerPort: 8081}, {name: grpc-health, containerPort: 8082}]
        readinessProbe: {httpGet: {path: /healthz, port: health}, periodSeconds: 2}
        livenessProbe: {grpc: {port: 8082}, periodSeconds: 5}
        startupProbe: {tcpSocket: {port: 8081}, periodSeconds: 1, failureThreshold: 60}
`
}

// waitReady waits until n pods with the label are Ready, each with the
// sidecar among its init containers.
func waitReady(t *testing.T, c *cluster, ns, selector string, n int) {
	t.Helper()
	waitUntil(t, 4*time.Minute, fmt.Sprintf("%d pods %s Ready in %s", n, selector, ns), func() error {
		pods, err := c.client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return err
		}
		ready := 0
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.DeletionTimestamp != nil {
				return fmt.Errorf("%s still terminating", p.Name)
			}
			if inject.FindProxy(p) == nil {
				return fmt.Errorf("%s has no sidecar", p.Name)
			}
			for _, cond := range p.Status.Conditions {
				if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		if ready != n || len(pods.Items) != n {
			return fmt.Errorf("%d of %d Ready", ready, len(pods.Items))
		}
		return nil
	})
}

func (c *cluster) scale(deploy string, n int) {
	c.t.Helper()
	logf(c.t, "scaling %s to %d", deploy, n)
	c.mustKubectl("-n", "shop", "scale", "deployment/"+deploy, "--replicas="+strconv.Itoa(n))
	waitReady(c.t, c, "shop", "app="+deploy, n)
	logf(c.t, "%s scaled to %d", deploy, n)
}

// clientNeverRestarted: the client's app container was never restarted,
// so its gRPC liveness probe, which the sidecar runs against the pod's
// address (the app listens nowhere else), passed throughout; and the
// client's log read is the whole run's.
func (c *cluster) clientNeverRestarted(t *testing.T) {
	t.Helper()
	pods, err := c.client.CoreV1().Pods("shop").List(context.Background(), metav1.ListOptions{LabelSelector: "app=client"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		for _, st := range p.Status.ContainerStatuses {
			if st.RestartCount != 0 {
				t.Errorf("pod %s: container %s restarted %d times (last state %+v)", p.Name, st.Name, st.RestartCount, st.LastTerminationState)
			}
		}
	}
}

var summaryRE = regexp.MustCompile(`SUMMARY ok=(\d+) fail=(\d+)`)

// clientSummary reads the client's counters from its log.
func (c *cluster) clientSummary() (ok, failed int, failures []string) {
	c.t.Helper()
	out := c.mustKubectl("-n", "shop", "logs", "deployment/client", "-c", "client")
	m := summaryRE.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		c.t.Fatalf("no SUMMARY in the client's log:\n%s", tail(out, 20))
	}
	ok, _ = strconv.Atoi(m[len(m)-1][1])
	failed, _ = strconv.Atoi(m[len(m)-1][2])
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "FAIL ") {
			failures = append(failures, l)
		}
	}
	return ok, failed, failures
}

// checkHandshakes: what an eavesdropper on the bridge reads of the
// sidecar-to-sidecar handshakes (port 80) and the sidecar-to-meshd ones
// (15012): TLS 1.3 only, so no certificate and no SPIFFE ID in clear.
func checkHandshakes(t *testing.T, capt *pcap.Capture) {
	t.Helper()
	perPort := map[uint16]int{}
	versions := map[string]int{}
	for _, h := range capt.Handshakes {
		port := h.Server.Port()
		if port != 80 && port != 15012 {
			continue
		}
		perPort[port]++
		versions[tls.VersionName(h.Version)]++
		if h.Version != tls.VersionTLS13 {
			t.Errorf("handshake %s -> %s negotiated %s, want TLS 1.3", h.Client, h.Server, tls.VersionName(h.Version))
		}
		if h.ServerCert != nil || h.ClientCert != nil {
			t.Errorf("handshake %s -> %s: a certificate crossed in clear", h.Client, h.Server)
		}
	}
	t.Logf("eavesdropper: %d TLS handshakes in all; sidecar to sidecar %d, sidecar to meshd %d; versions %v",
		len(capt.Handshakes), perPort[80], perPort[15012], versions)
	if perPort[80] == 0 || perPort[15012] == 0 {
		t.Errorf("handshakes seen: %d sidecar-to-sidecar, %d to meshd; want both (the meshd restart makes sidecars reconnect)", perPort[80], perPort[15012])
	}
	if capt.Contains("spiffe://") {
		t.Error("a SPIFFE ID crossed the bridge in clear")
	}
}

// inboundLine is a server sidecar's inbound access log line.
var inboundLine = regexp.MustCompile(`\[meshd inbound\] start=(\S+) pod=\S+ port=80 peer=(\S+) tls=(\S+) peer_serial=(\S+) peer_not_after=(\S+) code=(\d+)`)

// checkRenewals reads the web pods' sidecar logs (the eavesdropper sees no
// certificates under TLS 1.3): every request came over mutual TLS 1.3 from
// the client's identity, with a client certificate that had not expired and
// was not older than the renewal point (0.6 of its lifetime) plus the
// longest a connection may live (a third of it) plus the time to push it;
// and the pods saw several of the client's certificates (renewals).
func (c *cluster) checkRenewals(t *testing.T) {
	t.Helper()
	pods, err := c.client.CoreV1().Pods("shop").List(context.Background(), metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	serials := map[string]bool{}
	var lines int
	var oldest time.Duration
	for _, p := range pods.Items {
		out, err := c.kubectl("-n", "shop", "logs", p.Name, "-c", k8s.ContainerProxy)
		if err != nil {
			t.Fatalf("logs of %s: %v", p.Name, err)
		}
		for _, m := range inboundLine.FindAllStringSubmatch(out, -1) {
			lines++
			start, err1 := time.Parse(time.RFC3339Nano, m[1])
			notAfter, err2 := time.Parse(time.RFC3339Nano, m[5])
			if err1 != nil || err2 != nil || m[2] != "spiffe://cluster.local/ns/shop/sa/default" || m[3] != "TLSv1.3" {
				t.Errorf("%s: inbound request %q: want the client's identity over TLSv1.3 with a certificate", p.Name, m[0])
				continue
			}
			serials[m[4]] = true
			age := start.Sub(notAfter.Add(-certTTL)) // issued at NotAfter - lifetime (NotBefore is backdated)
			oldest = max(oldest, age)
			if limit := certTTL*6/10 + certTTL/3 + 15*time.Second; age > limit || !start.Before(notAfter) {
				t.Errorf("%s: request at %s over a connection made with a client certificate (serial %s) issued %s earlier, expiring %s (limit %s)",
					p.Name, m[1], m[4], age.Round(time.Second), m[5], limit)
			}
		}
	}
	t.Logf("web sidecars: %d inbound requests logged, %d client certificates seen, oldest at a request %s", lines, len(serials), oldest.Round(time.Second))
	if lines == 0 {
		t.Fatal("no inbound request in the web sidecars' logs")
	}
	if len(serials) < 3 {
		t.Errorf("the web sidecars saw %d client certificates: renewals not seen", len(serials))
	}
}

// outsiderRefused: a pod in a namespace without injection calls web by
// name; the STRICT server sidecar refuses it.
func (c *cluster) outsiderRefused(t *testing.T) {
	t.Helper()
	c.apply(`apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: outside}
spec:
  restartPolicy: Never
  containers:
  - name: client
    image: localhost/meshd-test/client:dev
    imagePullPolicy: Never
    args: ["n", "http://web.shop.svc.cluster.local/", "3"]
`)
	var phase corev1.PodPhase
	waitUntil(t, 2*time.Minute, "the outsider pod to finish", func() error {
		p, err := c.client.CoreV1().Pods("outside").Get(context.Background(), "outsider", metav1.GetOptions{})
		if err != nil {
			return err
		}
		phase = p.Status.Phase
		if phase != corev1.PodSucceeded && phase != corev1.PodFailed {
			return fmt.Errorf("phase %s", phase)
		}
		return nil
	})
	out, _ := c.kubectl("-n", "outside", "logs", "outsider")
	if phase != corev1.PodFailed || strings.Contains(out, "ok=1") || strings.Contains(out, "ok=2") || strings.Contains(out, "ok=3") {
		t.Errorf("a pod outside the mesh got through to the STRICT server (phase %s):\n%s", phase, out)
	} else {
		logf(t, "pod outside the mesh refused: %s", tail(strings.TrimSpace(out), 1))
	}
	c.refusalsVisible(t)
}

// refusalsVisible: the web sidecars log the outsider's refused connections
// ("[meshd refused]", flag NR: no chain for plaintext) and count them in
// the statistics they serve on the readiness port for Prometheus.
func (c *cluster) refusalsVisible(t *testing.T) {
	t.Helper()
	pods, err := c.client.CoreV1().Pods("shop").List(context.Background(), metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	var lines, counted int
	for _, p := range pods.Items {
		out, _ := c.kubectl("-n", "shop", "logs", p.Name, "-c", k8s.ContainerProxy)
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "[meshd refused]") && strings.Contains(l, "flags=NR") {
				lines++
			}
		}
		resp, err := http.Get(fmt.Sprintf("http://%s:%d%s", p.Status.PodIP, inject.ReadinessPort, bootstrap.StatsPath))
		if err != nil {
			t.Errorf("stats of %s: %v", p.Name, err)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "envoy_listener_no_filter_chain_match{") && strings.Contains(l, "15006") && !strings.HasSuffix(l, " 0") {
				counted++
			}
		}
	}
	logf(t, "refused connections: %d log lines with flag NR, counted by %d of %d web sidecars' statistics", lines, counted, len(pods.Items))
	if lines == 0 || counted == 0 {
		t.Errorf("the outsider's refused connections: %d log lines, counted by %d sidecars; want both", lines, counted)
	}
}

// refusedAndSkipped: what the injector refuses or leaves out, as a user
// meets it: a pod in a namespace enforcing Pod Security "baseline" is
// refused with meshd's reason (and no credentials are made), and so is a
// pod declaring the sidecar's readiness port; a hostNetwork
// pod runs without a sidecar and gets a NotInjected Event; the init
// container's log shows the rules it applied.
func (c *cluster) refusedAndSkipped(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	c.apply(`apiVersion: v1
kind: Namespace
metadata: {name: locked, labels: {meshd.io/inject: enabled, pod-security.kubernetes.io/enforce: baseline}}
`)
	out, err := c.kubectl("-n", "locked", "run", "app", "--image=localhost/meshd-test/client:dev", "--image-pull-policy=Never", "--restart=Never", "--", "n", "http://web.shop/", "1")
	if err == nil || !strings.Contains(out, `enforces Pod Security level "baseline"`) {
		t.Errorf("a pod in a baseline namespace: %v\n%s", err, out)
	} else {
		logf(t, "pod in a Pod Security baseline namespace refused: %s", strings.TrimSpace(tail(out, 1)))
	}
	if s, err := c.client.CoreV1().Secrets("locked").List(ctx, metav1.ListOptions{LabelSelector: inject.LabelProxyID}); err != nil || len(s.Items) != 0 {
		t.Errorf("credentials made for a refused pod: %v %v", s, err)
	}
	out, err = c.kubectl("-n", "shop", "run", "port15021", "--image=localhost/meshd-test/client:dev", "--image-pull-policy=Never", "--restart=Never", "--port=15021", "--", "n", "http://web.shop/", "1")
	if err == nil || !strings.Contains(out, `declares port 15021, which the sidecar listens on`) {
		t.Errorf("a pod declaring the sidecar's readiness port: %v\n%s", err, out)
	} else {
		logf(t, "pod declaring port 15021 refused: %s", strings.TrimSpace(tail(out, 1)))
	}
	c.apply(`apiVersion: v1
kind: Pod
metadata: {name: hostnet, namespace: shop}
spec:
  hostNetwork: true
  restartPolicy: Never
  containers:
  - name: client
    image: localhost/meshd-test/client:dev
    imagePullPolicy: Never
    args: ["n", "http://127.0.0.1:1/", "1"]
`)
	p, err := c.client.CoreV1().Pods("shop").Get(ctx, "hostnet", metav1.GetOptions{})
	if err != nil || inject.FindProxy(p) != nil || !strings.HasPrefix(p.Annotations[k8s.AnnotationStatus], "skipped: hostNetwork") {
		t.Errorf("hostNetwork pod: %v, annotations %v", err, p.Annotations)
	}
	waitUntil(t, time.Minute, "a NotInjected Event on the hostNetwork pod", func() error {
		ev, err := c.client.CoreV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=hostnet,reason=NotInjected"})
		if err != nil {
			return err
		}
		if len(ev.Items) == 0 {
			return fmt.Errorf("no Event yet")
		}
		logf(t, "hostNetwork pod not injected, Event: %s", ev.Items[0].Message)
		return nil
	})
	// The webhook answers the apiserver (every pod above went through it)
	// and no one else: a forged AdmissionReview sent straight to its
	// Service makes nothing.
	svc, err := c.client.CoreV1().Services("meshd-system").Get(ctx, "meshd", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	direct := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	forged := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","kind":{"version":"v1","kind":"Pod"},` +
		`"operation":"CREATE","namespace":"kube-system","object":{"metadata":{"name":"forged","namespace":"kube-system"},"spec":{"containers":[{"name":"a","image":"b"}]}}}}`
	resp, err := direct.Post("https://"+svc.Spec.ClusterIP+":443/inject", "application/json", strings.NewReader(forged))
	if err != nil {
		t.Fatalf("webhook Service: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a forged AdmissionReview sent straight to the webhook got %s; want 401", resp.Status)
	} else {
		logf(t, "a forged AdmissionReview sent straight to the webhook Service: %s", resp.Status)
	}
	pods, err := c.client.CoreV1().Pods("shop").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("web pods: %v", err)
	}
	out = c.mustKubectl("-n", "shop", "logs", pods.Items[0].Name, "-c", k8s.ContainerInit)
	if !strings.Contains(out, "interception set up") || !strings.Contains(out, "REDIRECT") {
		t.Errorf("meshd-init's log does not show the rules:\n%s", out)
	}
	// The pod's meshd.io/exclude-inbound-ports reached its rules.
	if !strings.Contains(out, "--dport 9113 -j RETURN") {
		t.Errorf("meshd-init's rules do not leave port 9113 alone (annotation meshd.io/exclude-inbound-ports):\n%s", out)
	}
}

// jobCompletes: an injected Job pod runs to completion; its native sidecar
// does not keep it alive.
func (c *cluster) jobCompletes(t *testing.T) {
	t.Helper()
	c.apply(`apiVersion: batch/v1
kind: Job
metadata: {name: once, namespace: shop}
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 180
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: client
        image: localhost/meshd-test/client:dev
        imagePullPolicy: Never
        args: ["n", "http://web/", "20"]
`)
	waitUntil(t, 3*time.Minute, "the injected Job to complete", func() error {
		j, err := c.client.BatchV1().Jobs("shop").Get(context.Background(), "once", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range j.Status.Conditions {
			if cond.Status != corev1.ConditionTrue {
				continue
			}
			switch cond.Type {
			case batchv1.JobComplete:
				return nil
			case batchv1.JobFailed:
				out, _ := c.kubectl("-n", "shop", "logs", "job/once", "--all-containers")
				t.Fatalf("the injected Job failed: %s: %s\n%s", cond.Reason, cond.Message, out)
			}
		}
		return fmt.Errorf("active %d, succeeded %d", j.Status.Active, j.Status.Succeeded)
	})
	logf(t, "%s", "injected Job completed (20 requests through its sidecar, then the sidecar stopped)")
}

// deletedPodLosesCredentials: a deleted pod's credentials Secret goes with
// it (the pod owns it).
func (c *cluster) deletedPodLosesCredentials(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	pods, err := c.client.CoreV1().Pods("shop").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("web pods: %v", err)
	}
	victim := pods.Items[0]
	secret := inject.SecretPrefix + victim.Annotations[k8s.AnnotationProxyID]
	waitUntil(t, 90*time.Second, "the credentials Secret owned by its pod", func() error {
		s, err := c.client.CoreV1().Secrets("shop").Get(ctx, secret, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, o := range s.OwnerReferences {
			if o.UID == victim.UID {
				return nil
			}
		}
		return fmt.Errorf("owners %v", s.OwnerReferences)
	})
	c.mustKubectl("-n", "shop", "delete", "pod", victim.Name, "--wait=true", "--timeout=90s")
	waitUntil(t, 90*time.Second, "the deleted pod's Secret to be gone", func() error {
		_, err := c.client.CoreV1().Secrets("shop").Get(ctx, secret, metav1.GetOptions{})
		if err == nil {
			return fmt.Errorf("%s still there", secret)
		}
		return nil
	})
	waitReady(t, c, "shop", "app=web", 2)
	logf(t, "pod %s deleted: its Secret %s is gone, the Deployment replaced the pod", victim.Name, secret)
}

// operatorsSeeEveryProxy: meshd proxy-status and meshd check, run against
// each replica through the apiserver's port-forward, together show every
// sidecar synced.
func (c *cluster) operatorsSeeEveryProxy(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	pods, err := c.client.CoreV1().Pods("meshd-system").List(ctx, metav1.ListOptions{LabelSelector: "app=meshd"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	shop, err := c.client.CoreV1().Pods("shop").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range shop.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			want[p.Name+".shop"] = true
		}
	}
	var addrs []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			addrs = append(addrs, c.portForward("meshd-system", p.Name, 15014))
		}
	}
	waitUntil(t, time.Minute, "every sidecar synced on some replica", func() error {
		synced := map[string]bool{}
		for _, a := range addrs {
			v, err := proxies(a)
			if err != nil {
				return err
			}
			for _, p := range v.Proxies {
				ok := len(p.Types) >= 5
				for _, st := range p.Types {
					ok = ok && st != nil && st.AckedVersion != "" && st.AckedVersion == st.SentVersion
				}
				if ok {
					synced[p.NodeID] = true
				}
			}
		}
		for n := range want {
			if !synced[n] {
				return fmt.Errorf("%s not synced (synced: %v)", n, synced)
			}
		}
		return nil
	})
	all := strings.Join(addrs, ",")
	out, err := c.run(c.bin, "proxy-status", "--debug-addr", all)
	if err != nil {
		t.Errorf("meshd proxy-status: %v\n%s", err, out)
	}
	t.Logf("meshd proxy-status --debug-addr %s:\n%s", all, strings.TrimSpace(out))
	for n := range want {
		if !regexp.MustCompile(regexp.QuoteMeta(n) + `\s.*SYNCED\s+SYNCED\s+SYNCED\s+SYNCED\s+SYNCED`).MatchString(out) {
			t.Errorf("proxy-status does not show %s synced", n)
		}
	}
	c.operatorsThroughAPIServer(t, want)
	if out, err := c.run(c.bin, "check", "--debug-addr", all); err != nil {
		t.Errorf("meshd check: %v\n%s", err, out)
	} else {
		t.Logf("meshd check:\n%s", strings.TrimSpace(out))
	}
	var client string
	for n := range want {
		if strings.HasPrefix(n, "client-") {
			client = n
		}
	}
	out, err = c.run(c.bin, "explain", "--from", client, "--to", "web.shop", "--debug-addr", all)
	if err != nil || !strings.Contains(out, ": MTLS") || strings.Contains(out, "connected to this replica") || strings.Contains(out, "sidecar-connected=false") {
		t.Errorf("meshd explain --from %s --to web.shop: %v\n%s", client, err, out)
	} else {
		t.Logf("meshd explain --from %s --to web.shop: %s", client, tail(out, 100))
	}
}

// operatorsThroughAPIServer: `kubectl meshd proxy-status` and `kubectl meshd
// check` (meshd as a kubectl plugin on the PATH), without --debug-addr and
// without a port-forward of ours: the plugin finds meshd's pods with the
// kubeconfig and reaches each one's loopback debug API through the
// apiserver's pods/portforward and the kubelet.
func (c *cluster) operatorsThroughAPIServer(t *testing.T, want map[string]bool) {
	t.Helper()
	plugins := t.TempDir()
	if err := os.Symlink(c.bin, filepath.Join(plugins, "kubectl-meshd")); err != nil {
		t.Fatal(err)
	}
	kubectl, err := testenv.ToolPath("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	kc := func(args ...string) (string, error) {
		cmd := exec.Command(kubectl, args...)
		cmd.Dir = c.root
		cmd.Env = append(append([]string{}, c.env...), "PATH="+plugins+":"+os.Getenv("PATH")+":/usr/sbin:/sbin", "KUBECONFIG="+c.kcfg)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := kc("meshd", "proxy-status")
	if err != nil {
		t.Errorf("kubectl meshd proxy-status: %v\n%s", err, out)
	}
	t.Logf("kubectl meshd proxy-status (through the apiserver):\n%s", strings.TrimSpace(out))
	for n := range want {
		if !regexp.MustCompile(regexp.QuoteMeta(n) + `\s.*SYNCED\s+SYNCED\s+SYNCED\s+SYNCED\s+SYNCED`).MatchString(out) {
			t.Errorf("kubectl meshd proxy-status does not show %s synced", n)
		}
	}
	if !strings.Contains(out, "meshd-system/meshd-") {
		t.Errorf("kubectl meshd proxy-status does not name the replicas' pods")
	}
	if out, err := kc("meshd", "check"); err != nil {
		t.Errorf("kubectl meshd check: %v\n%s", err, out)
	} else {
		t.Logf("kubectl meshd check (through the apiserver):\n%s", strings.TrimSpace(out))
	}
}

package bootstrap_test

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/kubelet"
	"github.com/meshd/meshd/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if d := cmp.Diff(string(want), string(got)); d != "" {
		t.Errorf("%s differs (-want +got):\n%s", path, d)
	}
}

func TestRenderGoldenAndValidatedByEnvoy(t *testing.T) {
	tests := map[string]bootstrap.Config{
		"delta": {Namespace: "demo", Pod: "web-0", ServiceAccount: "web", PodUID: "0b7a6f9e-1111-4222-8333-944455556666",
			XDSAddress: "198.19.0.12:15012", XDSServerSAN: "spiffe://cluster.local/ns/meshd-system/sa/meshd", CredsDir: "/etc/meshd/xds"},
		"sotw-dns": {Namespace: "demo", Pod: "client-0", ServiceAccount: "client", API: bootstrap.SotW,
			XDSAddress: "meshd.meshd-system.svc:15012", XDSServerSAN: "spiffe://cluster.local/ns/meshd-system/sa/meshd", CredsDir: "/etc/meshd/xds"},
		// Two replicas reached directly: Envoy fails over between them.
		"replicas": {Namespace: "demo", Pod: "web-0", ServiceAccount: "web",
			XDSAddress: "198.18.0.1:15012,198.18.0.1:15013", XDSServerSAN: "spiffe://cluster.local/ns/meshd-system/sa/meshd", CredsDir: "/etc/meshd/xds"},
		// As injected: the pod's name is not known at admission (the node
		// ID comes from --service-node), readiness on 15021 with the app's
		// probes rewritten to it.
		"injected": {Namespace: "demo", NodeID: "pending.demo", ServiceAccount: "web", ReadinessPort: 15021,
			AppProbes: map[string]bootstrap.AppProbe{
				"/app-health/app/readyz":  {Port: 8080, Path: "/ready?full=1"},
				"/app-health/app/livez":   {Port: 8080, Path: "/healthz"},
				"/app-health/admin/livez": {Port: 9090, Path: "live"},
				"/app-health/grpc/livez":  {Kind: bootstrap.ProbeGRPC, Port: 9091, Service: "orders", Period: 5},
			},
			XDSAddress: "meshd.meshd-system.svc.cluster.local:15012", XDSServerSAN: "spiffe://cluster.local/ns/meshd-system/sa/meshd", CredsDir: "/etc/meshd/proxy"},
		// As injected now: the probes reach the app at the pod's address,
		// their clusters on the command line (probe-args.json).
		"injected-pod-ip": {Namespace: "demo", NodeID: "pending.demo", ServiceAccount: "web", ReadinessPort: 15021,
			AppProbes:  podIPProbes,
			XDSAddress: "meshd.meshd-system.svc.cluster.local:15012", XDSServerSAN: "spiffe://cluster.local/ns/meshd-system/sa/meshd", CredsDir: "/etc/meshd/proxy"},
	}
	envoy := testenv.Need(t, "envoy")
	for name, cfg := range tests {
		t.Run(name, func(t *testing.T) {
			b, err := bootstrap.Render(cfg)
			if err != nil {
				t.Fatal(err)
			}
			y, err := bootstrap.YAML(b)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, name+".yaml", y)
			// Envoy checks that the credential files exist: render again
			// for a directory that has them.
			path := writeWithCreds(t, cfg)
			args, err := bootstrap.ProbeArgs(cfg.AppProbes)
			if err != nil {
				t.Fatal(err)
			}
			for k := range args {
				args[k] = kubelet.Expand(args[k], map[string]string{bootstrap.PodIPEnv: "198.18.0.5"})
			}
			out, err := exec.Command(envoy, append([]string{"--mode", "validate", "-c", path, "--log-level", "warn"}, args...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("envoy --mode validate rejected the bootstrap: %v\n%s", err, out)
			}
		})
	}
}

// podIPProbes are probes as the injector now records them.
var podIPProbes = map[string]bootstrap.AppProbe{
	"/app-health/app/readyz":   {Port: 8080, Path: "/ready?full=1", PodIP: true},
	"/app-health/app/livez":    {Port: 8080, Path: "/healthz", PodIP: true},
	"/app-health/grpc/livez":   {Kind: bootstrap.ProbeGRPC, Port: 9091, Service: "orders", Period: 5, PodIP: true},
	"/app-health/tcp/readyz":   {Kind: bootstrap.ProbeTCP, Port: 5432, PodIP: true},
	"/app-health/tls/livez":    {Kind: bootstrap.ProbeHTTPS, Port: 8443, Path: "/cost/$5/$(POD_IP)", Headers: map[string]string{"X-Price": "$$"}, PodIP: true},
	"/app-health/tls/readyz":   {Kind: bootstrap.ProbeHTTPS, Port: 8443, Path: "/ok", PodIP: true},
	"/app-health/app/startupz": {Port: 8081, Path: "/started", PodIP: true},
}

// TestProbeArgs: the clusters of the probes reaching the app at the pod's
// address are one command-line overlay, the address a reference the
// kubelet expands and every other '$' escaped from it; without such
// probes there are no arguments.
func TestProbeArgs(t *testing.T) {
	args, err := bootstrap.ProbeArgs(podIPProbes)
	if err != nil {
		t.Fatal(err)
	}
	if len(args) != 2 || args[0] != "--config-yaml" {
		t.Fatalf("args %q: want --config-yaml and the overlay", args)
	}
	golden(t, "probe-args.json", []byte(args[1]+"\n"))
	expanded := kubelet.Expand(args[1], map[string]string{bootstrap.PodIPEnv: "198.18.0.5"})
	for _, want := range []string{`"path":"/cost/$5/$(POD_IP)"`, `"value":"$$"`, `"address":"198.18.0.5","port_value":8443`, `"host":"198.18.0.5:8443"`} {
		if !strings.Contains(expanded, want) {
			t.Errorf("as the kubelet expands it, the overlay lacks %s: %s", want, expanded)
		}
	}
	legacy := map[string]bootstrap.AppProbe{"/app-health/app/livez": {Port: 8080, Path: "/healthz"}}
	if args, err := bootstrap.ProbeArgs(legacy); err != nil || args != nil {
		t.Errorf("probes reached on 127.0.0.1 gave arguments %q, %v", args, err)
	}
	if _, err := bootstrap.ProbeArgs(map[string]bootstrap.AppProbe{"/healthz": {Port: 1, PodIP: true}}); err == nil {
		t.Error("a probe outside /app-health/ gave no error")
	}
}

// TestOlderBootstrapBesideProbeArgs: a sidecar started with the probes'
// command-line clusters whose bootstrap an older meshd renders again (it
// knows no podIP: its own clusters on 127.0.0.1) still starts: the names
// do not clash.
func TestOlderBootstrapBesideProbeArgs(t *testing.T) {
	envoy := testenv.Need(t, "envoy")
	older := map[string]bootstrap.AppProbe{}
	for path, p := range podIPProbes {
		p.PodIP = false
		older[path] = p
	}
	cfg := bootstrap.Config{Namespace: "demo", NodeID: "web-0.demo", ServiceAccount: "web", ReadinessPort: 15021, AppProbes: older,
		XDSAddress: "198.19.0.12:15012", XDSServerSAN: "spiffe://cluster.local/ns/meshd-system/sa/meshd"}
	args, err := bootstrap.ProbeArgs(podIPProbes)
	if err != nil {
		t.Fatal(err)
	}
	for k := range args {
		args[k] = kubelet.Expand(args[k], map[string]string{bootstrap.PodIPEnv: "198.18.0.5"})
	}
	path := writeWithCreds(t, cfg)
	if out, err := exec.Command(envoy, append([]string{"--mode", "validate", "-c", path, "--log-level", "warn"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("envoy --mode validate rejected the older bootstrap with the command-line clusters: %v\n%s", err, out)
	}
}

func TestRenderRejectsBadConfig(t *testing.T) {
	good := bootstrap.Config{Namespace: "n", Pod: "p", ServiceAccount: "s", XDSAddress: "127.0.0.1:1", XDSServerSAN: "spiffe://x/ns/a/sa/b", CredsDir: "/c"}
	tests := map[string]func(*bootstrap.Config){
		"no namespace":      func(c *bootstrap.Config) { c.Namespace = "" },
		"no port":           func(c *bootstrap.Config) { c.XDSAddress = "meshd" },
		"relative creds":    func(c *bootstrap.Config) { c.CredsDir = "creds" },
		"unknown api":       func(c *bootstrap.Config) { c.API = "rest" },
		"no server SAN":     func(c *bootstrap.Config) { c.XDSServerSAN = "" },
		"port out of range": func(c *bootstrap.Config) { c.XDSAddress = "127.0.0.1:70000" },
		"probe path outside /app-health/": func(c *bootstrap.Config) {
			c.ReadinessPort, c.AppProbes = 15021, map[string]bootstrap.AppProbe{"/healthz/ready": {Port: 8080, Path: "/"}}
		},
		"probe without port": func(c *bootstrap.Config) {
			c.ReadinessPort, c.AppProbes = 15021, map[string]bootstrap.AppProbe{"/app-health/app/livez": {Path: "/"}}
		},
	}
	if _, err := bootstrap.Render(good); err != nil {
		t.Fatalf("good config rejected: %v", err)
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			c := good
			mutate(&c)
			if _, err := bootstrap.Render(c); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

func TestSDSFilesGolden(t *testing.T) {
	files, err := bootstrap.SDSFiles("/etc/meshd/xds")
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		golden(t, name, b)
	}
}

// writeWithCreds renders cfg with CredsDir pointing at a temporary directory
// holding the SDS files and PEM files, and returns the bootstrap's path.
func writeWithCreds(t *testing.T, cfg bootstrap.Config) string {
	t.Helper()
	dir := t.TempDir()
	cfg.CredsDir = dir
	files, err := bootstrap.SDSFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{bootstrap.FileCertChain, bootstrap.FileKey, bootstrap.FileRootCert} {
		files[name] = nil
	}
	b, err := bootstrap.Render(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if files["bootstrap.yaml"], err = bootstrap.YAML(b); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "bootstrap.yaml")
}

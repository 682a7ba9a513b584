package load_test

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/ca/store"
	"github.com/meshd/meshd/internal/load"
	"github.com/meshd/meshd/internal/testenv"
)

func TestMain(m *testing.M) {
	if addr := os.Getenv(floorServeEnv); addr != "" {
		os.Exit(serveFloor(addr)) // BenchmarkTransportFloor's server
	}
	os.Exit(testenv.Main(m))
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func freeAddr(tb testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// BenchmarkLoad runs meshd (its own process) on the real apiserver with a
// workload of MESHD_LOAD_SERVICES services x MESHD_LOAD_ENDPOINTS endpoints
// (default 100 x 10), connects MESHD_LOAD_SIDECARS fake sidecars (default
// 100; MESHD_LOAD_API=sotw for state-of-the-world) and makes
// MESHD_LOAD_CHANGES single endpoint writes (default 20). It reports the
// time to full config, convergence p50/p99/max, meshd's RSS and CPU. One
// run per invocation, whatever b.N.
func BenchmarkLoad(b *testing.B) {
	sidecars, services := envInt("MESHD_LOAD_SIDECARS", 100), envInt("MESHD_LOAD_SERVICES", 100)
	endpoints, changes := envInt("MESHD_LOAD_ENDPOINTS", 10), envInt("MESHD_LOAD_CHANGES", 20)
	delta := os.Getenv("MESHD_LOAD_API") != "sotw"
	env := testenv.Kube(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	ns := fmt.Sprintf("load%d", time.Now().UnixNano()%100000)
	// MESHD_LOAD_SCOPE=<n>: each sidecar's pod scopes it to n services.
	scope := envInt("MESHD_LOAD_SCOPE", 0)
	// MESHD_LOAD_MESHED=1: the endpoints are the sidecars' pods, in the mesh.
	meshed := os.Getenv("MESHD_LOAD_MESHED") == "1"
	w := &load.Workload{Client: env.Client, Namespace: ns, Services: services, Endpoints: endpoints, Sidecars: sidecars, Scope: scope, Meshed: meshed}
	start := time.Now()
	if err := w.Create(ctx); err != nil {
		b.Fatal(err)
	}
	b.Logf("workload: %d services x %d endpoints written in %s", services, endpoints, time.Since(start).Round(time.Millisecond))

	// MESHD_LOAD_PROFILE=<dir>: meshd's CPU profiles over the connect phase
	// and the churn phase (MESHD_LOAD_PROFILE_SECONDS each, default 20) and
	// its heap once connected, with its log.
	profDir := os.Getenv("MESHD_LOAD_PROFILE")
	m := startMeshd(ctx, b, env, profDir)
	pid, debugAddr := m.pid, m.debugAddr
	rssIdle, _, _ := load.Proc(pid)
	liveIdle := liveHeap(b, debugAddr)
	connectProfiled := profileCPU(b, debugAddr, profDir, "cpu.pprof")
	_, cpu0, _ := load.Proc(pid)
	_, own0, _ := load.Proc(os.Getpid())
	fleet, err := load.Connect(ctx, load.Config{XDSAddr: m.xdsAddr, Issuer: m.issuer, Bundle: m.bundle, TrustDomain: "cluster.local",
		Namespace: ns, Sidecars: sidecars, Delta: delta, Rate: float64(envInt("MESHD_LOAD_RATE", 1000)), ScopeOf: w.ScopeOf})
	if err != nil {
		b.Fatalf("%v\nmeshd log: %s", err, tail(m.log))
	}
	defer fleet.Close()
	rssConnected, cpu1, _ := load.Proc(pid)
	_, own1, _ := load.Proc(os.Getpid())
	// Once the connect storm's garbage is collected and returned: the RSS a
	// connected fleet costs (MESHD_LOAD_SETTLE seconds later, default 10).
	time.Sleep(time.Duration(envInt("MESHD_LOAD_SETTLE", 10)) * time.Second)
	rssSettled, _, _ := load.Proc(pid)
	liveSettled := liveHeap(b, debugAddr)
	if profDir != "" {
		// gc=1: what is live, not what awaits collection.
		saveProfile(b, "http://"+debugAddr+"/debug/pprof/heap?gc=1", filepath.Join(profDir, "heap.pprof"))
	}
	connectProfiled()
	// And over the churn phase (the changes take at least as long). Its
	// CPU is counted from here: not the settling above, nor the collection
	// liveHeap forces (at 10,000 sidecars a collection over a heap of
	// ~1 GB, more than the changes themselves cost).
	churnProfiled := profileCPU(b, debugAddr, profDir, "churn.pprof")
	_, cpuChurn, _ := load.Proc(pid)
	_, ownChurn, _ := load.Proc(os.Getpid())
	var all []time.Duration
	for range changes {
		lat, err := fleet.Convergence(ctx, func() (string, string, error) { return w.AddEndpoint(ctx) })
		if err != nil {
			b.Fatal(err)
		}
		all = append(all, lat...)
	}
	rssAfter, cpu2, _ := load.Proc(pid)
	_, own2, _ := load.Proc(os.Getpid())
	churnProfiled()
	sortDurations(all)
	mib := func(n int64) float64 { return float64(n) / (1 << 20) }
	b.ReportMetric(fleet.TimeToFull.Seconds(), "s-full-config")
	b.ReportMetric(float64(fleet.ConfigBytes)/1024, "KiB-config/sidecar")
	b.ReportMetric(float64(Percentile(all, 50).Microseconds())/1000, "ms-conv-p50")
	b.ReportMetric(float64(Percentile(all, 99).Microseconds())/1000, "ms-conv-p99")
	b.ReportMetric(float64(all[len(all)-1].Microseconds())/1000, "ms-conv-max")
	b.ReportMetric(mib(rssConnected-rssIdle)/float64(sidecars), "MiB-rss/sidecar")
	b.ReportMetric(mib(rssSettled-rssIdle)/float64(sidecars), "MiB-settled/sidecar")
	// The heap that stays live (RSS above it is the collector's headroom,
	// which swings with when the connect storm's collections fell).
	b.ReportMetric(float64(liveSettled-liveIdle)/float64(sidecars)/1024, "KiB-live/sidecar")
	b.ReportMetric(float64(fleet.Dropped()), "dropped")
	b.Logf("meshd: RSS idle %.1f MiB, connected %.1f MiB, settled %.1f MiB, after %d changes %.1f MiB; CPU connect %s, churn %s; load tool CPU connect %s (certificates included), churn %s; client certs %.0f/s (load tool side)",
		mib(rssIdle), mib(rssConnected), mib(rssSettled), changes, mib(rssAfter), cpu1-cpu0, cpu2-cpuChurn, own1-own0, own2-ownChurn, fleet.CertsPerSecond)
	b.Logf("%d sidecars (%s, scope %d services) x %d services x %d endpoints (%s): full config in %s; convergence over %d changes (%d deliveries): p50 %s p99 %s max %s; dropped %d",
		sidecars, map[bool]string{true: "delta", false: "sotw"}[delta], cmp.Or(scope, services), services, endpoints,
		map[bool]string{true: "in the mesh", false: "outside the mesh"}[meshed], fleet.TimeToFull.Round(time.Millisecond), changes,
		len(all), Percentile(all, 50), Percentile(all, 99), all[len(all)-1], fleet.Dropped())
	if reasons := fleet.DropReasons(); len(reasons) > 0 {
		// One line, most frequent first: a benchmark's log keeps only its
		// first lines.
		var parts []string
		for _, reason := range slices.SortedFunc(maps.Keys(reasons), func(a, b string) int { return cmp.Compare(reasons[b], reasons[a]) }) {
			parts = append(parts, fmt.Sprintf("%d x %s", reasons[reason], reason))
		}
		b.Logf("dropped: %s", strings.Join(parts, "; "))
	}
}

// meshdUnderLoad is a meshd serve process for the load tool.
type meshdUnderLoad struct {
	pid                int
	xdsAddr, debugAddr string
	log                string // its log file
	issuer             ca.Issuer
	bundle             []byte
}

// startMeshd builds meshd, runs it against env until tb ends (its log in
// logDir, or tb's temporary folder if empty) and waits until it is ready.
func startMeshd(ctx context.Context, tb testing.TB, env *testenv.Env, logDir string) *meshdUnderLoad {
	dir := tb.TempDir()
	bin := filepath.Join(dir, "meshd")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/meshd/meshd/cmd/meshd").CombinedOutput(); err != nil {
		tb.Fatalf("build meshd: %v\n%s", err, out)
	}
	if err := env.EnsureNamespace(ctx, "meshd-system"); err != nil {
		tb.Fatal(err)
	}
	caDir, xdsAddr, debugAddr := filepath.Join(dir, "ca"), freeAddr(tb), freeAddr(tb)
	cmd := exec.Command(bin, "serve", "--kubeconfig", env.Kubeconfig, "--ca-dir", caDir, "--xds-addr", xdsAddr, "--debug-addr", debugAddr,
		"--hold-off", "10ms", "--max-delay", "100ms")
	if lim := os.Getenv("MESHD_LOAD_MESHD_GOMEMLIMIT"); lim != "" {
		cmd.Env = append(os.Environ(), "GOMEMLIMIT="+lim) // meshd's soft memory limit, as deploy/ sets it
	}
	logPath := filepath.Join(cmp.Or(logDir, dir), "meshd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logFile.Close() })
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get("http://" + debugAddr + "/readyz"); err == nil && resp.StatusCode == 200 {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("meshd not ready\nmeshd log: %s", tail(logPath))
		}
	}
	root, err := rootca.Load(ctx, store.Files{Dir: caDir}, "meshd-ca", time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	issuer, err := ca.NewInternal(ca.InternalConfig{Authority: root})
	if err != nil {
		tb.Fatal(err)
	}
	return &meshdUnderLoad{pid: cmd.Process.Pid, xdsAddr: xdsAddr, debugAddr: debugAddr, log: logPath, issuer: issuer, bundle: root.BundlePEM}
}

// liveHeap is meshd's heap right after a collection: its heap profile
// handler collects first (gc=1), then go_memstats_heap_alloc_bytes is read.
func liveHeap(b *testing.B, debugAddr string) int64 {
	resp, err := http.Get("http://" + debugAddr + "/debug/pprof/heap?gc=1")
	if err != nil {
		b.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	resp, err = http.Get("http://" + debugAddr + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_memstats_heap_alloc_bytes "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatal(err)
			}
			return int64(f)
		}
	}
	b.Fatal("meshd's /metrics has no go_memstats_heap_alloc_bytes")
	return 0
}

// Percentile aliases load.Percentile.
var Percentile = load.Percentile

func sortDurations(d []time.Duration) { slices.Sort(d) }

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// profileCPU starts a CPU profile of meshd (MESHD_LOAD_PROFILE_SECONDS)
// into dir/name unless dir is empty; the returned func waits for it.
func profileCPU(b *testing.B, debugAddr, dir, name string) (wait func()) {
	done := make(chan struct{})
	if dir == "" {
		close(done)
	} else {
		go func() {
			defer close(done)
			saveProfile(b, "http://"+debugAddr+"/debug/pprof/profile?seconds="+strconv.Itoa(envInt("MESHD_LOAD_PROFILE_SECONDS", 20)), filepath.Join(dir, name))
		}()
	}
	return func() { <-done }
}

func saveProfile(b *testing.B, url, path string) {
	resp, err := http.Get(url)
	if err != nil {
		b.Errorf("profile %s: %v", url, err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		b.Error(err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		b.Error(err)
	}
	b.Logf("profile written: %s", path)
}

// Command meshd-load is meshd's load tool: it writes a workload of Services
// and EndpointSlices to a cluster, impersonates N sidecars (each with its
// own client certificate minted from meshd's CA directory) over delta or
// state-of-the-world ADS, then makes single endpoint writes and prints how
// long every sidecar took to see each. With --meshd-pid it also prints
// meshd's RSS and CPU from /proc.
//
//	meshd serve --kubeconfig K --ca-dir D --xds-addr 127.0.0.1:15012 --hold-off 10ms &
//	meshd-load --kubeconfig K --ca-dir D --xds-addr 127.0.0.1:15012 --sidecars 1000 --services 1000 --meshd-pid $!
//
// `make bench` runs the same through BenchmarkLoad (internal/load) on a
// smaller default size.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/ca/store"
	"github.com/meshd/meshd/internal/load"
)

func main() {
	var (
		kubeconfig, caDir, xdsAddr, api, ns string
		sidecars, services, endpoints, n    int
		pid                                 int
		rate                                float64
		meshed                              bool
	)
	flag.StringVar(&kubeconfig, "kubeconfig", "", "cluster meshd watches (required)")
	flag.StringVar(&caDir, "ca-dir", "", "meshd's --ca-dir, to mint the sidecars' client certificates (required)")
	flag.StringVar(&xdsAddr, "xds-addr", "127.0.0.1:15012", "meshd's xDS address")
	flag.StringVar(&api, "api", "delta", "delta or sotw")
	flag.StringVar(&ns, "namespace", fmt.Sprintf("load%d", time.Now().Unix()%100000), "namespace of the workload")
	flag.IntVar(&sidecars, "sidecars", 100, "sidecars to impersonate")
	flag.IntVar(&services, "services", 100, "services to write")
	flag.IntVar(&endpoints, "endpoints", 10, "endpoints per service")
	flag.IntVar(&n, "changes", 20, "single endpoint writes to measure")
	flag.IntVar(&pid, "meshd-pid", 0, "meshd's pid, for RSS and CPU")
	flag.Float64Var(&rate, "rate", 500, "new connections per second")
	flag.BoolVar(&meshed, "meshed", false, "the endpoints are the sidecars' pods, in the mesh (identities, mutual-TLS clusters, inbound listeners)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	w := &load.Workload{Namespace: ns, Services: services, Endpoints: endpoints, Sidecars: sidecars, Meshed: meshed}
	if err := run(ctx, kubeconfig, caDir, xdsAddr, api, w, n, pid, rate); err != nil {
		fmt.Fprintln(os.Stderr, "meshd-load:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, kubeconfig, caDir, xdsAddr, api string, w *load.Workload, n, pid int, rate float64) error {
	ns, sidecars, services, endpoints := w.Namespace, w.Sidecars, w.Services, w.Endpoints
	if kubeconfig == "" || caDir == "" {
		return fmt.Errorf("--kubeconfig and --ca-dir are required")
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = 200, 400
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	w.Client = client
	start := time.Now()
	if err := w.Create(ctx); err != nil {
		return err
	}
	fmt.Printf("workload: %d services x %d endpoints in %s written in %s\n", services, endpoints, ns, time.Since(start).Round(time.Millisecond))
	root, err := rootca.Load(ctx, store.Files{Dir: caDir}, "meshd-ca", time.Now())
	if err != nil {
		return err
	}
	issuer, err := ca.NewInternal(ca.InternalConfig{Authority: root})
	if err != nil {
		return err
	}
	procLine := func(what string) {
		if pid > 0 {
			rss, cpu, err := load.Proc(pid)
			if err == nil {
				fmt.Printf("meshd %-22s RSS %7.1f MiB, CPU %s\n", what+":", float64(rss)/(1<<20), cpu)
			}
		}
	}
	procLine("before connect")
	fleet, err := load.Connect(ctx, load.Config{XDSAddr: xdsAddr, Issuer: issuer, Bundle: root.BundlePEM, TrustDomain: "cluster.local",
		Namespace: ns, Sidecars: sidecars, Delta: api != "sotw", Rate: rate})
	if err != nil {
		return err
	}
	defer fleet.Close()
	fmt.Printf("%d sidecars (%s): full config and secrets in %s, %.0f KiB each (client certificates minted at %.0f/s)\n", sidecars, api, fleet.TimeToFull.Round(time.Millisecond), float64(fleet.ConfigBytes)/1024, fleet.CertsPerSecond)
	procLine("connected")
	var all []time.Duration
	for range n {
		lat, err := fleet.Convergence(ctx, func() (string, string, error) { return w.AddEndpoint(ctx) })
		if err != nil {
			return err
		}
		all = append(all, lat...)
	}
	slices.Sort(all)
	fmt.Printf("convergence over %d single endpoint writes x %d sidecars: p50 %s, p99 %s, max %s; streams dropped: %d\n",
		n, sidecars, load.Percentile(all, 50), load.Percentile(all, 99), all[len(all)-1], fleet.Dropped())
	procLine(fmt.Sprintf("after %d changes", n))
	return nil
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/internal/config"
	"github.com/meshd/meshd/internal/debug"
	"github.com/meshd/meshd/internal/podcert"
)

func newServeCmd() *cobra.Command {
	cfg := config.Default()
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the control plane",
		Long: `Run the control plane: watch Kubernetes (or a directory of YAML), mint
per-pod certificates, serve xDS to the sidecars, inject sidecars.`,
		Example: `  # in a cluster (deploy/base or the Helm chart run this)
  meshd serve --xds-addr=0.0.0.0:15012 --webhook-addr=0.0.0.0:15017 -n meshd-system

  # from a kubeconfig, the CA in files
  meshd serve --kubeconfig ~/.kube/config --ca-dir /tmp/meshd-ca

  # without a cluster: Kubernetes objects from YAML files
  meshd serve --local-dir ./objects --ca-dir /tmp/meshd-ca`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return serve(cmd.Context(), cfg, cmd.ErrOrStderr()) },
	}
	gfs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.RegisterFlags(gfs)
	gfs.VisitAll(func(f *flag.Flag) {
		pf := pflag.PFlagFromGoFlag(f)
		if f.Name == "namespace" {
			pf.Shorthand = "n"
		}
		cmd.Flags().AddFlag(pf)
	})
	return cmd
}

// runner is a long-lived part of meshd: it runs until ctx ends, and an
// error from any one stops them all.
type runner func(ctx context.Context) error

// stages are meshd's parts that several others read (the debug API, the
// injector), each constructed whole, in pipeline order.
type stages struct {
	kube  *kubeStage
	creds *credentials
	xds   *xdsStage
	watch *watchStage
	lead  *singletons
	root  *rootca.Follower
}

// serve builds the stages in pipeline order, then runs them all on one
// context until it ends or one of them fails.
func serve(ctx context.Context, cfg config.Config, stderr io.Writer) error {
	if err := prepareConfig(&cfg); err != nil {
		return err
	}
	log := newLogger(stderr)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// kube: a cluster or a directory of YAML; where problems are reported;
	// where sidecars' xDS credentials come from.
	kube, err := newKube(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer kube.problems.Shutdown()
	// credentials: the internal CA (root from the CA Secret, or files) and
	// the workload CA (it, or cert-manager with --issuer-ref).
	creds, err := newCredentials(ctx, cfg, kube, reg, log)
	if err != nil {
		return err
	}
	// xds: consumes the Publisher's snapshots, produces ADS streams over mTLS.
	x, err := newXDS(cfg, creds, kube.creds.KeyOnNode, reg, log)
	if err != nil {
		return err
	}
	if err := waitServingCert(ctx, cfg, creds.renewer, creds.serving); err != nil {
		return err
	}
	// k8s: informers -> batched state -> model -> mesh (published to every proxy).
	watch, err := newWatch(cfg, kube, x.mesh, reg, log)
	if err != nil {
		return err
	}
	// leader: singletons under a Lease (always this replica without a cluster).
	lead := newSingletons(kube.electionClient(), cfg.Namespace, cfg.LeaseDuration, reg, log)
	// ca: the CA Secret (or files) -> root rotation steps, authority swaps.
	root, err := newRootFollower(cfg, kube, creds, x.secrets, lead, reg, log)
	if err != nil {
		return err
	}
	st := &stages{kube: kube, creds: creds, xds: x, watch: watch, lead: lead, root: root}
	return runStages(ctx, cfg, st, reg, log)
}

// runStages adds the parts that read several stages (pod certificates,
// injection, the debug API) and runs everything on one context.
func runStages(ctx context.Context, cfg config.Config, st *stages, reg *prometheus.Registry, log *slog.Logger) error {
	// podcert: PodCertificateRequests -> answers signed by the internal CA;
	// its bundle -> a ClusterTrustBundle (leader, when the cluster has them).
	if st.kube.creds.Mode == podcert.ModePodCertificate {
		if err := startPodCertificates(st.lead, cfg, st.kube.client, st.creds.issuer, reg, log); err != nil {
			return err
		}
	}
	// inject: pods -> sidecars + credentials (cluster mode, if enabled).
	var inj *injection
	if cfg.WebhookAddr != "" {
		var err error
		if inj, err = newInjection(ctx, cfg, st, reg, log); err != nil {
			return err
		}
	}
	// debug: the operator API (and probes) over every stage.
	debugRunners, err := newDebug(cfg, st, inj, reg, log)
	if err != nil {
		return err
	}
	runners := append(st.runners(), debugRunners...)
	if inj != nil {
		runners = append(runners, inj.serve)
	}
	// Last: the leader runs the singletons registered above.
	return runAll(ctx, append(runners, st.lead.Run))
}

// runners lists what runs once every stage is built.
func (st *stages) runners() []runner {
	rs := []runner{st.xds.srv.Start, st.watch.watcher.Start, st.root.Start}
	if st.creds.certManager != nil {
		rs = append(rs, st.creds.certManager.run)
	}
	if st.kube.policyStatus != nil {
		rs = append(rs, st.kube.policyStatus.Start)
	}
	return rs
}

// runAll starts every runner on one context and returns the first error once
// all have returned.
func runAll(ctx context.Context, runners []runner) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, r := range runners {
		g.Go(func() error { return r(ctx) })
	}
	return g.Wait()
}

// prepareConfig validates cfg and reads the debug token from its file.
func prepareConfig(cfg *config.Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	if cfg.DebugTokenFile != "" {
		b, err := os.ReadFile(cfg.DebugTokenFile)
		if err != nil {
			return fmt.Errorf("--debug-token-file: %w", err)
		}
		if cfg.DebugToken = strings.TrimSpace(string(b)); cfg.DebugToken == "" {
			return fmt.Errorf("--debug-token-file %s is empty", cfg.DebugTokenFile)
		}
	}
	if cfg.DebugAuth == "token" {
		return debug.CheckExposure(cfg.DebugAddr, cfg.DebugToken)
	}
	return nil
}

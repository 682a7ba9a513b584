package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshd/meshd/internal/config"
	"github.com/meshd/meshd/k8s"
)

// kubeStage is where meshd reads Kubernetes: a cluster (client, rc) or a
// directory of YAML (local; then client, rc and dyn are nil).
type kubeStage struct {
	client kubernetes.Interface
	rc     *rest.Config
	local  *k8s.LocalDir
	// Authorization policies: watched through the dynamic client (from
	// when their CRD is installed); their status written back in a cluster.
	dyn            dynamic.Interface
	policiesServed func() (bool, error)
	policyStatus   *k8s.PolicyStatus // nil without a cluster
	problems       *k8s.ProblemReporter
	creds          credentialsMode
}

func newKube(ctx context.Context, cfg config.Config, log *slog.Logger) (*kubeStage, error) {
	client, rc, local, err := kubeClient(cfg, log)
	if err != nil {
		return nil, err
	}
	dyn, policiesServed, err := policyClient(client, rc, local)
	if err != nil {
		return nil, err
	}
	k := &kubeStage{client: client, rc: rc, local: local, dyn: dyn, policiesServed: policiesServed}
	if local == nil {
		k.policyStatus = k8s.NewPolicyStatus(dyn, log, nil)
	}
	k.problems = k8s.NewProblemReporter(ctx, client, log)
	k.creds = decideCredentials(cfg, client, local != nil)
	log.Info("credentials: sidecar xDS credentials mode", "mode", string(k.creds.Mode), "reason", k.creds.Reason)
	return k, nil
}

// electionClient is where the singletons' Lease lives (nil without a
// cluster: this replica always leads).
func (k *kubeStage) electionClient() kubernetes.Interface {
	if k.local != nil {
		return nil
	}
	return k.client
}

func kubeClient(cfg config.Config, log *slog.Logger) (kubernetes.Interface, *rest.Config, *k8s.LocalDir, error) {
	if cfg.LocalDir != "" {
		local, err := k8s.NewLocalDir(cfg.LocalDir, time.Second, log)
		if err != nil {
			return nil, nil, nil, err
		}
		return nil, nil, local, nil
	}
	var rc *rest.Config
	var err error
	if cfg.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("kubernetes client: %w (use --kubeconfig, or --local-dir without a cluster)", err)
	}
	client, err := kubernetes.NewForConfig(rc)
	return client, rc, nil, err
}

// policyClient is where AuthorizationPolicies are read in a cluster, with
// how to tell whether their CRD is installed there (a local dir serves them
// itself: nil).
func policyClient(client kubernetes.Interface, rc *rest.Config, local *k8s.LocalDir) (dynamic.Interface, func() (bool, error), error) {
	if local != nil {
		return nil, nil, nil
	}
	dyn, err := dynamic.NewForConfig(rc)
	return dyn, func() (bool, error) { return k8s.PolicyAPIServed(client.Discovery()) }, err
}

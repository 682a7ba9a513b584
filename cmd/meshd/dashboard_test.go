package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/meshd/meshd/internal/testenv"
)

// TestDashboardQueriesExistingMetrics: every metric the Grafana dashboard
// in deploy/observability queries is exposed by a meshd running against
// the real apiserver, on the health port the PodMonitor scrapes.
func TestDashboardQueriesExistingMetrics(t *testing.T) {
	b, err := os.ReadFile("../../deploy/observability/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	names := map[string]string{} // metric family -> panel
	re := regexp.MustCompile(`meshd_[a-z_]+`)
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, n := range re.FindAllString(tg.Expr, -1) {
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					n = strings.TrimSuffix(n, suffix)
				}
				names[n] = p.Title
			}
		}
	}
	if len(names) < 10 {
		t.Fatalf("the dashboard queries only %d metrics: %v", len(names), names)
	}

	env := testenv.Kube(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := env.FreshNamespace(ctx, "meshd-system"); err != nil {
		t.Fatal(err)
	}
	health := freeAddr(t)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--kubeconfig", env.Kubeconfig, "--xds-addr", freeAddr(t), "--debug-addr", freeAddr(t),
			"--health-addr", health}, io.Discard, io.Discard)
	}()
	defer func() { cancel(); <-done }()
	waitHTTP(t, "http://"+health+"/readyz")
	metrics := getBody(t, "http://"+health+"/metrics")
	for n, panel := range names {
		if !strings.Contains(metrics, "# TYPE "+n+" ") {
			t.Errorf("panel %q queries %s, which meshd does not expose", panel, n)
		}
	}
}

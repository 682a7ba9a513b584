// Command helmrender renders a Helm chart with values to YAML on stdout, as
// `helm template --include-crds` does, with the Helm Go library (helm.sh/helm/v3) from the
// Go module proxy. deploy/chart_test.go runs it to check deploy/charts/meshd
// against the real apiserver and against the Kustomize base.
//
//	helmrender [--namespace N] [--release R] [-f values.yaml]... [--set k=v]... CHART_DIR
//
// Built by `bash hack/tools.sh helmrender` into .tools/bin. It lives in its
// own module so that Helm's dependency tree stays out of meshd's go.mod.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/cli"
	"helm.sh/helm/v3/pkg/cli/values"
	"helm.sh/helm/v3/pkg/getter"
)

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "helmrender:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("helmrender", flag.ContinueOnError)
	var opts values.Options
	namespace := fs.String("namespace", "meshd-system", "the release's namespace")
	release := fs.String("release", "meshd", "the release name")
	fs.Var((*list)(&opts.ValueFiles), "f", "a values file (repeatable)")
	fs.Var((*list)(&opts.Values), "set", "a value, key=value (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("want one chart directory, got %d arguments", fs.NArg())
	}
	chrt, err := loader.Load(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("load chart %s: %w", fs.Arg(0), err)
	}
	vals, err := opts.MergeValues(getter.All(cli.New()))
	if err != nil {
		return fmt.Errorf("values: %w", err)
	}
	// helm template --include-crds: a client-only dry-run install, the
	// chart's crds/ included.
	install := action.NewInstall(&action.Configuration{})
	install.DryRun, install.ClientOnly, install.Replace, install.IncludeCRDs = true, true, true, true
	install.ReleaseName, install.Namespace = *release, *namespace
	rel, err := install.Run(chrt, vals)
	if err != nil {
		return fmt.Errorf("render %s: %w", chrt.Name(), err)
	}
	_, err = fmt.Print(rel.Manifest)
	return err
}

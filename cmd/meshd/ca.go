package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/ca/store"
	"github.com/meshd/meshd/internal/config"
	"github.com/meshd/meshd/internal/debug"
)

func newCACmd() *cobra.Command {
	cfg := config.Default()
	var output string
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Show the mesh CA, or ask meshd to rotate its root",
		Long: `Show the mesh CA's state, or ask the running meshd to rotate the root (meshd
steps the rotation; this only sets the request on the CA Secret or files).`,
		Example: `  meshd ca status
  meshd ca rotate-root --kubeconfig ~/.kube/config -n meshd-system
  meshd ca status --ca-dir /tmp/meshd-ca`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(cmd.ErrOrStderr())
			_ = cmd.Usage()
			return usageError{err: errors.New("ca: a verb is required: status or rotate-root")}
		},
	}
	fs := cmd.PersistentFlags()
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig path (empty: in-cluster config)")
	fs.StringVarP(&cfg.Namespace, "namespace", "n", cfg.Namespace, "meshd's namespace")
	fs.StringVar(&cfg.CADir, "ca-dir", "", "the CA directory of meshd serve --ca-dir")
	fs.StringVar(&cfg.CASecret, "ca-secret", cfg.CASecret, "name of the CA Secret")
	fs.StringVarP(&output, "output", "o", "table", "output format: table, json or yaml")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	for _, verb := range []struct{ name, short string }{
		{"status", "Show the CA: rotation phase, signing certificate, trusted roots"},
		{"rotate-root", "Ask the running meshd to rotate the root (bundle -> signing -> done)"},
	} {
		cmd.AddCommand(&cobra.Command{Use: verb.name, Short: verb.short, Args: cobra.NoArgs,
			Example: "  meshd ca " + verb.name + " --kubeconfig ~/.kube/config -n meshd-system",
			RunE: func(cmd *cobra.Command, _ []string) error {
				if output != "table" && output != "json" && output != "yaml" {
					return outputError(output)
				}
				return caCmd(cmd.Context(), verb.name == "rotate-root", cfg, output, cmd.OutOrStdout(), cmd.ErrOrStderr())
			}})
	}
	return cmd
}

// caCmd is `meshd ca status|rotate-root`: the CA's state, and asking the
// running meshd to rotate the root.
func caCmd(ctx context.Context, rotate bool, cfg config.Config, output string, stdout, stderr io.Writer) error {
	var secrets store.Store = store.Files{Dir: cfg.CADir}
	if cfg.CADir == "" {
		client, _, _, err := kubeClient(cfg, newLogger(stderr))
		if err != nil {
			return err
		}
		secrets = store.Secrets{Client: client.CoreV1().Secrets(cfg.Namespace)}
	}
	s, err := secrets.Get(ctx, cfg.CASecret)
	if err != nil {
		return fmt.Errorf("ca: %s: %w", cfg.CASecret, err)
	}
	if rotate {
		rootca.RequestRotation(s)
		if s, err = secrets.Update(ctx, s); err != nil {
			return fmt.Errorf("ca: request rotation: %w", err)
		}
		if output == "table" {
			fmt.Fprintln(stdout, "root rotation requested; meshd steps it (bundle -> signing -> done)")
		}
	}
	return printCAStatus(stdout, output, s)
}

// printCAStatus prints the CA of a CA record (Secret or directory); as JSON or YAML in the shape of
// the debug API's /debug/certs "ca", plus rotation_requested.
func printCAStatus(w io.Writer, output string, s *store.Record) error {
	a, err := rootca.FromData(s.Data, time.Now())
	if err != nil {
		return err
	}
	phase := string(s.Data[rootca.KeyPhase])
	if phase == "" {
		phase = "steady"
	}
	if output != "table" {
		v := struct {
			debug.CAView
			RotationRequested bool `json:"rotation_requested"`
		}{debug.CAView{Backend: "internal", Signing: debug.NewRootView(a.Cert), RotationPhase: phase, PhaseSince: string(s.Data[rootca.KeyPhaseSince])},
			rootca.RotationRequested(s)}
		for _, r := range a.Roots {
			v.Roots = append(v.Roots, debug.NewRootView(r))
		}
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		return printRaw(w, output, append(b, '\n'))
	}
	fmt.Fprintf(w, "phase: %s (since %s), rotation requested: %v\n", phase, orDash(string(s.Data[rootca.KeyPhaseSince])), rootca.RotationRequested(s))
	fmt.Fprintf(w, "signing: %s serial %s, expires %s\n", a.Cert.Subject, a.Cert.SerialNumber.Text(16), a.Cert.NotAfter.UTC().Format(time.RFC3339))
	for _, r := range a.Roots {
		fmt.Fprintf(w, "trusted root: %s serial %s, expires %s\n", r.Subject, r.SerialNumber.Text(16), r.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Command meshd is the meshd control plane and its operator tools.
//
// cmd/meshd is the only place that knows every stage; it parses flags into
// one config.Config and wires the components in order. The command line is
// cobra's (as kubectl's, istioctl's and cmctl's): `meshd <verb> --help`,
// `meshd completion bash|zsh|fish`, double-dash flags. Installed as
// kubectl-meshd on the PATH it is a kubectl plugin (`kubectl meshd
// proxy-status`), and as kubectl_complete-meshd it completes for kubectl.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/meshd/meshd/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	name, args := invokedAs(filepath.Base(os.Args[0]), os.Args[1:])
	err := runAs(ctx, name, args, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
	}
	os.Exit(exitCode(err))
}

// invokedAs returns the name the help shows and the arguments: kubectl runs
// the plugin kubectl-meshd for `kubectl meshd ...`, and kubectl_complete-meshd
// (the same binary, linked) for its completions.
func invokedAs(argv0 string, args []string) (string, []string) {
	switch strings.TrimSuffix(argv0, ".exe") {
	case "kubectl-meshd":
		return "kubectl meshd", args
	case "kubectl_complete-meshd":
		return "kubectl meshd", append([]string{cobra.ShellCompRequestCmd}, args...)
	}
	return "meshd", args
}

// usageError is a command line meshd cannot run: an unknown verb or flag, a
// missing argument. It exits 2, as the flag package does; other errors 1.
// With a command, the message ends with a hint to its --help.
type usageError struct {
	err     error
	command string // e.g. "meshd proxy-status"
}

func (e usageError) Error() string {
	if e.command == "" {
		return e.err.Error()
	}
	return fmt.Sprintf("%v\nRun '%s --help' for usage.", e.err, e.command)
}

func (e usageError) Unwrap() error { return e.err }

// exitCode is 0 on success (also for --help, as kubectl), 2 for a command
// line that cannot run, 1 for a command that failed.
func exitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.As(err, new(usageError)):
		return 2
	}
	return 1
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runAs(ctx, "meshd", args, stdout, stderr)
}

// runAs runs one command line. Errors are returned, not printed; a usage
// error carries a hint to the verb's --help.
func runAs(ctx context.Context, name string, args []string, stdout, stderr io.Writer) error {
	root := newRootCmd(name, stdout, stderr)
	root.SetArgs(doubleDash(root, args))
	// An error before a verb runs is about the command line.
	started := false
	var wrap func(*cobra.Command)
	wrap = func(c *cobra.Command) {
		if run := c.RunE; run != nil {
			c.RunE = func(c *cobra.Command, args []string) error { started = true; return run(c, args) }
		}
		for _, sub := range c.Commands() {
			wrap(sub)
		}
	}
	wrap(root)
	cmd, err := root.ExecuteContextC(ctx)
	if err != nil && !started && !errors.As(err, new(usageError)) {
		err = usageError{err, cmd.CommandPath()}
	}
	return err
}

func newRootCmd(name string, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "meshd",
		Short: "An Envoy xDS control plane with per-pod identities and transparent mTLS",
		Long: `meshd: an Envoy xDS control plane with per-pod identities and transparent mTLS.

The control plane runs as 'meshd serve'; the injected init container runs
'meshd iptables'. The operator verbs (proxy-status, proxy-config, certs,
explain, check) read a running meshd's debug API: at --debug-addr, or, without
it, through the Kubernetes apiserver (a port-forward to every meshd pod, with
your kubeconfig's credentials).`,
		Example: `  # every sidecar and its sync state, from meshd in the current cluster
  meshd proxy-status

  # the same as a kubectl plugin (kubectl-meshd on the PATH)
  kubectl meshd proxy-status -o yaml

  # shell completion
  source <(meshd completion bash)`,
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(cmd.ErrOrStderr())
			_ = cmd.Usage()
			return usageError{err: errors.New("a verb is required")}
		},
	}
	if name != "meshd" {
		root.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: name}
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	// --o was the flag package's spelling of -o.
	root.SetGlobalNormalizationFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if name == "o" {
			name = "output"
		}
		return pflag.NormalizedName(name)
	})
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError{err, cmd.CommandPath()}
	})
	root.AddGroup(&cobra.Group{ID: "run", Title: "Running meshd:"}, &cobra.Group{ID: "ops", Title: "Operating a mesh:"})
	for _, c := range []*cobra.Command{newServeCmd(), newIptablesCmd(), newBootstrapCmd()} {
		c.GroupID = "run"
		root.AddCommand(c)
	}
	for _, c := range append(newOpsCmds(), newCACmd()) {
		c.GroupID = "ops"
		root.AddCommand(c)
	}
	root.AddCommand(newVersionCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:     "version",
		Short:   "Print meshd's version",
		Example: "  meshd version\n  meshd version -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch output {
			case "", "table":
				_, err := fmt.Fprintln(cmd.OutOrStdout(), "meshd", version.Version)
				return err
			case "json", "yaml":
				return printRaw(cmd.OutOrStdout(), output, []byte(fmt.Sprintf("{%q:%q}\n", "version", version.Version)))
			}
			return outputError(output)
		},
	}
	addOutputFlag(cmd, &output)
	return cmd
}

// addOutputFlag is -o/--output table|json|yaml, the same on every verb
// that prints something.
func addOutputFlag(cmd *cobra.Command, output *string) {
	cmd.Flags().StringVarP(output, "output", "o", "table", "output format: table, json or yaml")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
}

func outputError(output string) error {
	return usageError{err: fmt.Errorf("-o %q: want table, json or yaml", output)}
}

// doubleDash rewrites -flag and -flag=value into --flag...: the Go flag
// package, which meshd used before, accepted one dash for long flags, and
// scripts and manifests may still pass them. Single letters stay shorthands.
func doubleDash(root *cobra.Command, args []string) []string {
	long := map[string]bool{"help": true}
	var collect func(*cobra.Command)
	collect = func(c *cobra.Command) {
		add := func(f *pflag.Flag) { long[f.Name] = true }
		c.Flags().VisitAll(add)
		c.PersistentFlags().VisitAll(add)
		for _, sub := range c.Commands() {
			collect(sub)
		}
	}
	collect(root)
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if a == "--" {
			copy(out[i:], args[i:])
			break
		}
		if name, _, _ := strings.Cut(strings.TrimPrefix(a, "-"), "="); len(name) > 1 && a[0] == '-' && !strings.HasPrefix(a, "--") && long[name] {
			out[i] = "-" + a
		}
	}
	return out
}

func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

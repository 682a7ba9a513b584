// Command meshd is the meshd control plane and its operator tools.
//
// cmd/meshd is the only place that knows every stage; it parses flags into
// one config.Config and wires the components in order.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshd/meshd/internal/version"
)

const usage = `meshd: an Envoy xDS control plane with per-pod identities and transparent mTLS.

Usage:
  meshd serve [flags]    run the control plane
  meshd iptables [flags] set up traffic interception in a pod's network namespace
  meshd bootstrap [flags] render a sidecar's Envoy bootstrap and credentials
  meshd ca status|rotate-root [flags]  show the CA, or ask meshd to rotate the root
  meshd proxy-status     connected proxies and their sync state (reads the debug API)
  meshd proxy-config <pod>.<ns> [--type clusters|listeners|routes|endpoints|secrets]
  meshd certs [<pod>.<ns>]  issued certificates, CA roots, rotation state
  meshd explain --from <pod>.<ns> --to <svc>.<ns>  why traffic does or does not get mTLS
  meshd check            pre-flight and health: ready, CA, issuer, proxies in sync
  meshd version          print the version
  (operator commands take --debug-addr, --debug-token and -o table|json|yaml)
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "meshd:", err)
	}
	os.Exit(exitCode(os.Args[1:], err))
}

// exitCode is 0 on success and when help was asked for (`meshd <verb>
// --help` as kubectl does), 2 otherwise (an error, or usage shown because
// the command line was incomplete).
func exitCode(args []string, err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		for _, a := range args {
			if a == "-h" || a == "-help" || a == "--help" {
				return 0
			}
		}
	}
	return 2
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stderr)
	case "bootstrap":
		return bootstrapCmd(ctx, args[1:], stdout, stderr)
	case "iptables":
		return iptablesCmd(ctx, args[1:], stdout, stderr)
	case "ca":
		return caCmd(ctx, args[1:], stdout, stderr)
	case "proxy-status":
		return proxyStatusCmd(ctx, args[1:], stdout, stderr)
	case "proxy-config":
		return proxyConfigCmd(ctx, args[1:], stdout, stderr)
	case "certs":
		return certsCmd(ctx, args[1:], stdout, stderr)
	case "explain":
		return explainCmd(ctx, args[1:], stdout, stderr)
	case "check":
		return checkCmd(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "meshd", version.Version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

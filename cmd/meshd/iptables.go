package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/internal/iptables"
)

func newIptablesCmd() *cobra.Command {
	var f iptablesFlags
	cmd := &cobra.Command{
		Use:   "iptables",
		Short: "Set up traffic interception in a pod's network namespace",
		Long: `Set up (or remove) the pod's traffic interception: the injected init
container runs this in the pod's network namespace. Traffic of the sidecar's
uid is not redirected.`,
		Example: `  # what would be applied
  meshd iptables --dry-run --exclude-inbound-ports 15021

  # remove meshd's rules
  meshd iptables --cleanup`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return iptablesCmd(cmd.Context(), f, cmd.OutOrStdout()) },
	}
	fs := cmd.Flags()
	fs.UintVar(&f.outbound, "outbound-port", 15001, "sidecar port that receives outbound traffic")
	fs.UintVar(&f.inbound, "inbound-port", 15006, "sidecar port that receives inbound traffic")
	fs.UintVar(&f.uid, "proxy-uid", 1337, "uid of the sidecar, whose traffic is not redirected")
	fs.StringVar(&f.inPorts, "exclude-inbound-ports", "", "comma-separated pod ports reached without the sidecar")
	fs.StringVar(&f.outPorts, "exclude-outbound-ports", "", "comma-separated destination ports that bypass the sidecar")
	fs.StringVar(&f.outCIDRs, "exclude-outbound-cidrs", "", "comma-separated destination CIDRs that bypass the sidecar")
	fs.BoolVar(&f.dryRun, "dry-run", false, "print the rules instead of applying them")
	fs.BoolVar(&f.cleanup, "cleanup", false, "remove meshd's rules")
	return cmd
}

type iptablesFlags struct {
	outbound, inbound, uid      uint
	inPorts, outPorts, outCIDRs string
	dryRun, cleanup             bool
}

// iptablesCmd sets up (or removes) the pod's traffic interception; it runs in
// the pod's network namespace (the injected init container).
func iptablesCmd(ctx context.Context, f iptablesFlags, stdout io.Writer) error {
	var cfg iptables.Config
	if f.outbound == 0 || f.outbound > 65535 || f.inbound == 0 || f.inbound > 65535 {
		return fmt.Errorf("iptables: --outbound-port and --inbound-port must be 1-65535")
	}
	cfg.OutboundPort, cfg.InboundPort, cfg.ProxyUID = uint16(f.outbound), uint16(f.inbound), uint32(f.uid)
	var err error
	if cfg.ExcludeInboundPorts, err = iptables.ParsePorts(f.inPorts); err != nil {
		return err
	}
	if cfg.ExcludeOutboundPorts, err = iptables.ParsePorts(f.outPorts); err != nil {
		return err
	}
	if cfg.ExcludeOutboundCIDRs, err = iptables.ParseCIDRs(f.outCIDRs); err != nil {
		return err
	}
	switch {
	case f.cleanup:
		return iptables.Cleanup(ctx, iptables.Exec{})
	case f.dryRun:
		fmt.Fprint(stdout, iptables.Restore(cfg))
		for _, j := range iptables.Jumps() {
			fmt.Fprintf(stdout, "# then, unless present: iptables -t nat -A %v\n", j)
		}
		return nil
	}
	if err := iptables.Apply(ctx, iptables.Exec{}, cfg); err != nil {
		return err
	}
	// The init container's log is where an operator looks: say what is in
	// force.
	fmt.Fprintf(stdout, "meshd iptables: interception set up (outbound -> %d, inbound -> %d, uid %d not redirected); rules applied:\n",
		cfg.OutboundPort, cfg.InboundPort, cfg.ProxyUID)
	fmt.Fprint(stdout, iptables.Restore(cfg))
	for _, j := range iptables.Jumps() {
		fmt.Fprintf(stdout, "-A %s\n", strings.Join(j, " "))
	}
	return nil
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/meshd/meshd/internal/iptables"
)

// iptablesCmd sets up (or removes) the pod's traffic interception; it runs in
// the pod's network namespace (the injected init container).
func iptablesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("iptables", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg iptables.Config
	var inPorts, outPorts, outCIDRs string
	outbound := fs.Uint("outbound-port", 15001, "sidecar port that receives outbound traffic")
	inbound := fs.Uint("inbound-port", 15006, "sidecar port that receives inbound traffic")
	uid := fs.Uint("proxy-uid", 1337, "uid of the sidecar, whose traffic is not redirected")
	fs.StringVar(&inPorts, "exclude-inbound-ports", "", "comma-separated pod ports reached without the sidecar")
	fs.StringVar(&outPorts, "exclude-outbound-ports", "", "comma-separated destination ports that bypass the sidecar")
	fs.StringVar(&outCIDRs, "exclude-outbound-cidrs", "", "comma-separated destination CIDRs that bypass the sidecar")
	dryRun := fs.Bool("dry-run", false, "print the rules instead of applying them")
	cleanup := fs.Bool("cleanup", false, "remove meshd's rules")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *outbound == 0 || *outbound > 65535 || *inbound == 0 || *inbound > 65535 {
		return fmt.Errorf("iptables: --outbound-port and --inbound-port must be 1-65535")
	}
	cfg.OutboundPort, cfg.InboundPort, cfg.ProxyUID = uint16(*outbound), uint16(*inbound), uint32(*uid)
	var err error
	if cfg.ExcludeInboundPorts, err = iptables.ParsePorts(inPorts); err != nil {
		return err
	}
	if cfg.ExcludeOutboundPorts, err = iptables.ParsePorts(outPorts); err != nil {
		return err
	}
	if cfg.ExcludeOutboundCIDRs, err = iptables.ParseCIDRs(outCIDRs); err != nil {
		return err
	}
	switch {
	case *cleanup:
		return iptables.Cleanup(ctx, iptables.Exec{})
	case *dryRun:
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

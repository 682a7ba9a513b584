package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Runner runs iptables commands; exec by default, a fake in tests.
type Runner interface {
	Run(ctx context.Context, stdin string, name string, args ...string) error
}

// Exec runs the real iptables binaries.
type Exec struct{}

// Run implements Runner.
func (Exec) Run(ctx context.Context, stdin, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// Apply installs the interception. It is idempotent: the chains are
// rewritten, and each jump is added only if `iptables -C` does not find it.
func Apply(ctx context.Context, r Runner, cfg Config) error {
	if err := r.Run(ctx, Restore(cfg), "iptables-restore", "--noflush"); err != nil {
		return fmt.Errorf("iptables: apply: %w", err)
	}
	for _, j := range Jumps() {
		if r.Run(ctx, "", "iptables", append([]string{"-t", "nat", "-C"}, j...)...) == nil {
			continue
		}
		if err := r.Run(ctx, "", "iptables", append([]string{"-t", "nat", "-A"}, j...)...); err != nil {
			return fmt.Errorf("iptables: apply: %w", err)
		}
	}
	return nil
}

// Cleanup removes everything Apply added; missing rules are not an error.
func Cleanup(ctx context.Context, r Runner) error {
	var errs []error
	for _, j := range Jumps() {
		for r.Run(ctx, "", "iptables", append([]string{"-t", "nat", "-C"}, j...)...) == nil {
			if err := r.Run(ctx, "", "iptables", append([]string{"-t", "nat", "-D"}, j...)...); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	var present []string
	for _, c := range []string{ChainInbound, ChainInRedir, ChainOutput, ChainRedirect} {
		if r.Run(ctx, "", "iptables", "-t", "nat", "-L", c, "-n") == nil {
			present = append(present, c)
		}
	}
	// Flush all before deleting any: the chains jump to each other.
	for _, verb := range []string{"-F", "-X"} {
		for _, c := range present {
			if err := r.Run(ctx, "", "iptables", "-t", "nat", verb, c); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("iptables: cleanup: %w", err)
	}
	return nil
}

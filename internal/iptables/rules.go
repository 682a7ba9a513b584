// Package iptables builds and applies the traffic interception of a meshed
// pod, inside the pod's network namespace: outbound TCP goes to the sidecar's
// port 15001, inbound TCP to 15006, except traffic of the sidecar itself (uid
// 1337), loopback, and excluded ports and CIDRs.
//
// Where it sits: run by `meshd iptables` in the pod's init container. Rules
// are rendered as an iptables-restore document (pure), then applied.
package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Chain names. All rules meshd adds live in these chains, reached by one jump
// each from PREROUTING and OUTPUT, so clean-up is exact.
const (
	ChainInbound  = "MESHD_INBOUND"
	ChainOutput   = "MESHD_OUTPUT"
	ChainRedirect = "MESHD_REDIRECT"
	ChainInRedir  = "MESHD_IN_REDIRECT"
)

// AppSourceAddress is the address the sidecar's inbound listener forwards
// to the app from (xds/translate sets it on the inbound clusters).
const AppSourceAddress = "127.0.0.6"

// Config describes one pod's interception.
type Config struct {
	// OutboundPort is the sidecar's outbound capture port (default 15001).
	OutboundPort uint16
	// InboundPort is the sidecar's inbound capture port (default 15006).
	InboundPort uint16
	// ProxyUID is the sidecar's uid; its own traffic is never redirected (default 1337).
	ProxyUID uint32
	// ExcludeInboundPorts are pod ports reached directly (e.g. health probes).
	ExcludeInboundPorts []uint16
	// ExcludeOutboundPorts are destination ports that bypass the sidecar.
	ExcludeOutboundPorts []uint16
	// ExcludeOutboundCIDRs are destinations that bypass the sidecar.
	ExcludeOutboundCIDRs []netip.Prefix
}

func (c *Config) defaults() {
	if c.OutboundPort == 0 {
		c.OutboundPort = 15001
	}
	if c.InboundPort == 0 {
		c.InboundPort = 15006
	}
	if c.ProxyUID == 0 {
		c.ProxyUID = 1337
	}
}

// Restore renders the nat-table document for `iptables-restore --noflush`.
// Declaring the chains flushes them, so applying twice gives the same rules;
// the two jumps are added by Apply only where missing.
func Restore(cfg Config) string {
	cfg.defaults()
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("*nat")
	for _, c := range []string{ChainInbound, ChainInRedir, ChainOutput, ChainRedirect} {
		line(":%s - [0:0]", c)
	}
	// Inbound: everything TCP to the pod goes to the inbound listener, but
	// the sidecar's own ports and excluded ones.
	inExcluded := slices.Concat([]uint16{cfg.OutboundPort, cfg.InboundPort}, cfg.ExcludeInboundPorts)
	for _, p := range sortedPorts(inExcluded) {
		line("-A %s -p tcp --dport %d -j RETURN", ChainInbound, p)
	}
	line("-A %s -p tcp -j %s", ChainInbound, ChainInRedir)
	line("-A %s -p tcp -j REDIRECT --to-ports %d", ChainInRedir, cfg.InboundPort)
	// Outbound: the sidecar's own traffic and loopback are left alone, but
	// the sidecar's connections to its own pod's address: a pod calling its
	// own service reaches itself through its inbound listener as any other
	// caller (without this the app got the sidecar's TLS handshake). The
	// inbound listener's forwarding to the app, from 127.0.0.6, stays as
	// it is (else it would loop).
	line("-A %s -s %s/32 -o lo -j RETURN", ChainOutput, AppSourceAddress)
	line("-A %s -o lo ! -d 127.0.0.0/8 -m owner --uid-owner %d -j %s", ChainOutput, cfg.ProxyUID, ChainInbound)
	line("-A %s -m owner --uid-owner %d -j RETURN", ChainOutput, cfg.ProxyUID)
	line("-A %s -o lo -j RETURN", ChainOutput)
	line("-A %s -d 127.0.0.0/8 -j RETURN", ChainOutput)
	for _, p := range cfg.ExcludeOutboundCIDRs {
		line("-A %s -d %s -j RETURN", ChainOutput, p.Masked())
	}
	for _, p := range sortedPorts(cfg.ExcludeOutboundPorts) {
		line("-A %s -p tcp --dport %d -j RETURN", ChainOutput, p)
	}
	line("-A %s -j %s", ChainOutput, ChainRedirect)
	line("-A %s -p tcp -j REDIRECT --to-ports %d", ChainRedirect, cfg.OutboundPort)
	line("COMMIT")
	return b.String()
}

// Jumps are the rules that hook meshd's chains into the built-in ones, as
// iptables arguments after the table.
func Jumps() [][]string {
	return [][]string{
		{"PREROUTING", "-p", "tcp", "-j", ChainInbound},
		{"OUTPUT", "-p", "tcp", "-j", ChainOutput},
	}
}

func sortedPorts(ports []uint16) []uint16 {
	out := slices.Clone(ports)
	slices.Sort(out)
	return slices.Compact(out)
}

// ParsePorts parses "80,8080" into ports.
func ParsePorts(s string) ([]uint16, error) {
	var out []uint16
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("iptables: port %q: want 1-65535", f)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}

// ParseCIDRs parses "10.0.0.0/8,192.0.2.1/32" into prefixes.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("iptables: CIDR %q: %w", f, err)
		}
		out = append(out, p)
	}
	return out, nil
}

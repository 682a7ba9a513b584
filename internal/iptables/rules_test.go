package iptables_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/meshd/meshd/internal/iptables"
)

func TestRestoreDocument(t *testing.T) {
	got := iptables.Restore(iptables.Config{
		ExcludeInboundPorts:  []uint16{15021, 22, 22},
		ExcludeOutboundPorts: []uint16{5432},
		ExcludeOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.7.9/16")},
	})
	want := strings.Join([]string{
		"*nat",
		":MESHD_INBOUND - [0:0]",
		":MESHD_IN_REDIRECT - [0:0]",
		":MESHD_OUTPUT - [0:0]",
		":MESHD_REDIRECT - [0:0]",
		"-A MESHD_INBOUND -p tcp --dport 22 -j RETURN",
		"-A MESHD_INBOUND -p tcp --dport 15001 -j RETURN",
		"-A MESHD_INBOUND -p tcp --dport 15006 -j RETURN",
		"-A MESHD_INBOUND -p tcp --dport 15021 -j RETURN",
		"-A MESHD_INBOUND -p tcp -j MESHD_IN_REDIRECT",
		"-A MESHD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
		"-A MESHD_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
		"-A MESHD_OUTPUT -o lo ! -d 127.0.0.0/8 -m owner --uid-owner 1337 -j MESHD_INBOUND",
		"-A MESHD_OUTPUT -m owner --uid-owner 1337 -j RETURN",
		"-A MESHD_OUTPUT -o lo -j RETURN",
		"-A MESHD_OUTPUT -d 127.0.0.0/8 -j RETURN",
		"-A MESHD_OUTPUT -d 198.18.0.0/16 -j RETURN",
		"-A MESHD_OUTPUT -p tcp --dport 5432 -j RETURN",
		"-A MESHD_OUTPUT -j MESHD_REDIRECT",
		"-A MESHD_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
		"COMMIT",
	}, "\n") + "\n"
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("restore document (-want +got):\n%s", d)
	}
}

func TestParse(t *testing.T) {
	if p, err := iptables.ParsePorts(" 80, 8080,"); err != nil || !cmp.Equal(p, []uint16{80, 8080}) {
		t.Errorf("ParsePorts = %v, %v", p, err)
	}
	for _, bad := range []string{"0", "65536", "http", "-1"} {
		if _, err := iptables.ParsePorts(bad); err == nil {
			t.Errorf("ParsePorts(%q) accepted", bad)
		}
	}
	if _, err := iptables.ParseCIDRs("198.18.0.0/15,bogus"); err == nil {
		t.Error("ParseCIDRs accepted bogus")
	}
}

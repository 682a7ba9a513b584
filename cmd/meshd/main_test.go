package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
)

func TestSubcommands(t *testing.T) {
	tests := map[string]struct {
		args    []string
		wantOut string
		wantErr string
	}{
		"version":           {args: []string{"version"}, wantOut: "meshd "},
		"unknown":           {args: []string{"frobnicate"}, wantErr: "unknown command"},
		"iptables dry-run":  {args: []string{"iptables", "--dry-run", "--exclude-inbound-ports", "22"}, wantOut: "--dport 22 -j RETURN"},
		"iptables bad port": {args: []string{"iptables", "--dry-run", "--exclude-outbound-ports", "x"}, wantErr: "port"},
		"serve bad config":  {args: []string{"serve", "--cert-ttl", "1s"}, wantErr: "--cert-ttl"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), tc.args, &out, &errOut)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out.String(), tc.wantOut) {
				t.Errorf("output %q lacks %q", out.String(), tc.wantOut)
			}
		})
	}
}

// TestHelpExitsZero: `meshd <verb> --help` (and -h) is success, as with
// kubectl; an incomplete command line or an error is not.
func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"proxy-status", "--help"}, {"serve", "-h"}, {"check", "-help"}} {
		err := run(context.Background(), args, io.Discard, io.Discard)
		if code := exitCode(err); code != 0 {
			t.Errorf("meshd %v: exit %d (%v)", args, code, err)
		}
	}
	for _, args := range [][]string{{}, {"no-such-verb"}, {"proxy-status", "--no-such-flag"}} {
		err := run(context.Background(), args, io.Discard, io.Discard)
		if code := exitCode(err); code != 2 {
			t.Errorf("meshd %v: exit %d, want 2", args, code)
		}
	}
}

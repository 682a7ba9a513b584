package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/ca/store"
)

// TestEveryVerbHasHelpWithExamples: `meshd <verb> --help` exits 0 and shows
// examples, for every verb.
func TestEveryVerbHasHelpWithExamples(t *testing.T) {
	root := newRootCmd("meshd", nil, nil)
	var verbs [][]string
	for _, c := range root.Commands() {
		if c.Name() == "help" || c.Name() == "completion" || c.Hidden {
			continue
		}
		verbs = append(verbs, []string{c.Name()})
		for _, sub := range c.Commands() {
			verbs = append(verbs, []string{c.Name(), sub.Name()})
		}
	}
	if len(verbs) < 11 {
		t.Fatalf("only %d verbs: %v", len(verbs), verbs)
	}
	for _, v := range verbs {
		var out bytes.Buffer
		args := append(v, "--help")
		err := run(context.Background(), args, &out, &out)
		if code := exitCode(err); code != 0 {
			t.Errorf("meshd %v: exit %d (%v)", args, code, err)
		}
		if _, ex, _ := strings.Cut(out.String(), "Examples:\n"); !strings.Contains(ex, "meshd "+strings.Join(v, " ")) {
			t.Errorf("meshd %v shows no example:\n%s", args, out.String())
		}
	}
}

// TestFlagsConsistent: the verbs that talk to a cluster take --kubeconfig and
// -n/--namespace, the operator verbs -o/--output, under the same names.
func TestFlagsConsistent(t *testing.T) {
	root := newRootCmd("meshd", nil, nil)
	want := map[string][]string{
		"serve": {"kubeconfig", "namespace/n"}, "ca status": {"kubeconfig", "namespace/n", "output/o"},
		"bootstrap": {"namespace/n"}, "version": {"output/o"},
	}
	for _, v := range []string{"proxy-status", "proxy-config", "certs", "explain", "check"} {
		want[v] = []string{"kubeconfig", "context", "namespace/n", "output/o", "debug-addr", "debug-token"}
	}
	for verb, flags := range want {
		cmd, _, err := root.Find(strings.Fields(verb))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range flags {
			name, short, _ := strings.Cut(f, "/")
			got := cmd.Flags().Lookup(name)
			if got == nil {
				got = cmd.InheritedFlags().Lookup(name)
			}
			switch {
			case got == nil:
				t.Errorf("meshd %s has no --%s", verb, name)
			case got.Shorthand != short:
				t.Errorf("meshd %s --%s: shorthand %q, want %q", verb, name, got.Shorthand, short)
			}
		}
	}
}

// TestUsageErrors: an unknown verb or flag, or a missing argument, is a
// short error with a hint and exit 2; a near miss gets a suggestion.
func TestUsageErrors(t *testing.T) {
	tests := map[string]struct {
		args []string
		want []string
	}{
		"unknown verb":     {[]string{"frobnicate"}, []string{`unknown command "frobnicate"`, "Run 'meshd --help' for usage."}},
		"near miss":        {[]string{"proxy-stat"}, []string{"Did you mean this?", "proxy-status"}},
		"unknown flag":     {[]string{"proxy-status", "--no-such-flag"}, []string{"unknown flag: --no-such-flag", "Run 'meshd proxy-status --help' for usage."}},
		"missing argument": {[]string{"proxy-config"}, []string{"accepts 1 arg(s), received 0", "Run 'meshd proxy-config --help'"}},
		"missing flags":    {[]string{"explain", "--from", "a.b"}, []string{`required flag(s) "to" not set`}},
		"bad output":       {[]string{"check", "-o", "xml"}, []string{`-o "xml": want table, json or yaml`}},
		"ca without verb":  {[]string{"ca"}, []string{"status or rotate-root"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), tc.args, &out, &out)
			if code := exitCode(err); code != 2 {
				t.Fatalf("exit %d (%v), want 2", code, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	// A command that runs and fails exits 1.
	err := run(context.Background(), []string{"check", "--debug-addr", "127.0.0.1:1"}, &bytes.Buffer{}, &bytes.Buffer{})
	if code := exitCode(err); code != 1 {
		t.Errorf("failed check: exit %d (%v), want 1", code, err)
	}
}

// TestSingleDashLongFlags: the flag package's -flag spelling still works.
func TestSingleDashLongFlags(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"iptables", "-dry-run", "-exclude-inbound-ports=22", "-proxy-uid", "1500"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--dport 22 -j RETURN", "--uid-owner 1500"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := run(context.Background(), []string{"version", "--o", "json"}, &out, &out); err != nil || !strings.HasPrefix(out.String(), `{"version":`) {
		t.Errorf("version --o json: %v: %s", err, out.String())
	}
	// Shorthands are not rewritten: -n and -o keep their meaning.
	root := newRootCmd("meshd", nil, nil)
	got := doubleDash(root, []string{"check", "-n", "x", "-ojson", "-help", "--", "-debug-addr"})
	want := []string{"check", "-n", "x", "-ojson", "--help", "--", "-debug-addr"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("doubleDash: %q, want %q", got, want)
	}
}

// TestCompletion: the generated bash script is valid bash, zsh and fish
// scripts are generated, and cobra's completion request completes verbs,
// flag values and flags.
func TestCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("bash not found")
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		var out bytes.Buffer
		if err := run(context.Background(), []string{"completion", shell}, &out, &out); err != nil {
			t.Fatalf("completion %s: %v", shell, err)
		}
		if !strings.Contains(out.String(), "meshd") || out.Len() < 1000 {
			t.Errorf("completion %s: %d bytes", shell, out.Len())
		}
		if shell == "bash" {
			script := filepath.Join(t.TempDir(), "meshd.bash")
			if err := os.WriteFile(script, out.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			if b, err := exec.Command(bash, "-n", script).CombinedOutput(); err != nil {
				t.Errorf("bash -n: %v\n%s", err, b)
			}
		}
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"prox"}, []string{"proxy-config", "proxy-status"}},
		{[]string{"proxy-status", "-o", ""}, []string{"table", "json", "yaml"}},
		{[]string{"proxy-config", "web-0.demo", "--type", "cl"}, []string{"clusters"}},
		{[]string{"check", "--kube"}, []string{"--kubeconfig"}},
		{[]string{"ca", ""}, []string{"rotate-root", "status"}},
	} {
		var out bytes.Buffer
		if err := run(context.Background(), append([]string{cobra.ShellCompRequestCmd}, tc.args...), &out, &bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
		for _, w := range tc.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("completing %q: %q lacks %s", tc.args, out.String(), w)
			}
		}
	}
}

// TestInvokedAsKubectlPlugin: as kubectl-meshd the help speaks of `kubectl
// meshd`; as kubectl_complete-meshd it answers kubectl's completion request.
func TestInvokedAsKubectlPlugin(t *testing.T) {
	name, args := invokedAs("kubectl-meshd", []string{"proxy-status", "--help"})
	var out bytes.Buffer
	if err := runAs(context.Background(), name, args, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "kubectl meshd proxy-status [flags]") {
		t.Errorf("plugin help:\n%s", out.String())
	}
	name, args = invokedAs("kubectl_complete-meshd", []string{"proxy-s"})
	out.Reset()
	if err := runAs(context.Background(), name, args, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "proxy-status") {
		t.Errorf("plugin completion: %q", out.String())
	}
}

// TestCAStatusOutput: `meshd ca status` prints the CA of --ca-dir as a
// table, JSON or YAML; `rotate-root` sets the request it then shows.
func TestCAStatusOutput(t *testing.T) {
	dir := t.TempDir()
	a, err := rootca.LoadOrCreate(context.Background(), store.Files{Dir: dir}, "meshd-ca", "cluster.local", rand.Reader, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	serial := a.Cert.SerialNumber.Text(16)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"ca", "status", "--ca-dir", dir}, []string{"phase: steady", "signing: ", "serial " + serial}},
		{[]string{"ca", "status", "--ca-dir", dir, "-o", "json"}, []string{`"serial": "` + serial + `"`, `"rotation_phase": "steady"`, `"rotation_requested": false`}},
		{[]string{"ca", "rotate-root", "--ca-dir", dir, "-o", "yaml"}, []string{"serial: " + serial, "rotation_requested: true"}},
		{[]string{"ca", "status", "--ca-dir", dir}, []string{"rotation requested: true"}},
	} {
		var out bytes.Buffer
		if err := run(context.Background(), tc.args, &out, &out); err != nil {
			t.Fatalf("meshd %q: %v", tc.args, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("meshd %q lacks %q:\n%s", tc.args, w, out.String())
			}
		}
	}
	if err := run(context.Background(), []string{"ca", "status", "--ca-dir", dir, "-o", "xml"}, io.Discard, io.Discard); exitCode(err) != 2 {
		t.Errorf("-o xml: %v", err)
	}
}

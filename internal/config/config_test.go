package config

import (
	"flag"
	"strings"
	"testing"
	"time"
)

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("default config invalid: %v", err)
	}
}

func TestValidate(t *testing.T) {
	tests := map[string]struct {
		args    []string
		wantErr string
	}{
		"defaults":           {},
		"bad xds addr":       {args: []string{"-xds-addr", "nohostport"}, wantErr: "--xds-addr"},
		"both sources":       {args: []string{"-kubeconfig", "k", "-local-dir", "d"}, wantErr: "exclude each other"},
		"short ttl":          {args: []string{"-cert-ttl", "30s"}, wantErr: "--cert-ttl"},
		"hold-off > max":     {args: []string{"-hold-off", "2s", "-max-delay", "1s"}, wantErr: "hold-off"},
		"empty trust domain": {args: []string{"-trust-domain", ""}, wantErr: "--trust-domain"},
		"issuer ref":         {args: []string{"-issuer-ref", "ClusterIssuer/mesh-ca", "-trust-bundle", "configmap/mesh-roots/ca.crt"}},
		"external issuer":    {args: []string{"-issuer-ref", "VaultIssuer/v/vault.example.com"}},
		"bad issuer ref":     {args: []string{"-issuer-ref", "mesh-ca"}, wantErr: "kind/name[/group]"},
		"issuer, no cluster": {args: []string{"-issuer-ref", "Issuer/x", "-local-dir", "d", "-ca-dir", "c"}, wantErr: "needs a cluster"},
		"bad trust bundle":   {args: []string{"-issuer-ref", "Issuer/x", "-trust-bundle", "configmap/x"}, wantErr: "configmap/<name>/<key>"},
		"bundle, no issuer":  {args: []string{"-trust-bundle", "secret/x/ca.crt"}, wantErr: "needs --issuer-ref"},
		"root namespace":     {args: []string{"-root-namespace", "mesh-policies"}},
		"bad root namespace": {args: []string{"-root-namespace", "Mesh_Policies"}, wantErr: "--root-namespace"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c := Default()
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			c.RegisterFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
	if c := Default(); c.PolicyRoot() != c.Namespace {
		t.Errorf("default root namespace %q, want meshd's own %q", c.PolicyRoot(), c.Namespace)
	}
	if Default().CertTTL != 24*time.Hour {
		t.Errorf("default cert TTL = %s, want 24h", Default().CertTTL)
	}
}

func TestXDSLimitFlags(t *testing.T) {
	c := Default()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	c.RegisterFlags(fs)
	if err := fs.Parse([]string{"--xds-streams-per-identity", "2", "--xds-connections-per-identity", "3", "--xds-streams-per-connection", "4",
		"--xds-request-rate", "7.5", "--xds-request-burst", "9", "--xds-handshake-timeout", "5s", "--xds-peer-timeout", "2m", "--xds-min-ping-interval", "15s"}); err != nil {
		t.Fatal(err)
	}
	l := c.XDSLimits
	if l.StreamsPerIdentity != 2 || l.ConnectionsPerIdentity != 3 || l.StreamsPerConnection != 4 || l.RequestsPerSecond != 7.5 || l.Burst != 9 ||
		l.HandshakeTimeout != 5*time.Second || l.PeerTimeout != 2*time.Minute || l.MinPingInterval != 15*time.Second {
		t.Errorf("limits %+v do not hold the flags' values", l)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("valid limits refused: %v", err)
	}
	// Defaults are xds's, shown as the flags' defaults.
	if d := Default().XDSLimits; d.StreamsPerIdentity != 8 || d.PeerTimeout != time.Minute || fs.Lookup("xds-streams-per-connection").DefValue != "16" {
		t.Errorf("default limits %+v, streams per connection %q", d, fs.Lookup("xds-streams-per-connection").DefValue)
	}
	if err := fs.Parse([]string{"--xds-streams-per-connection", "-1"}); err == nil {
		t.Error("a negative --xds-streams-per-connection was taken")
	}

	bad := map[string][]string{
		"--xds-streams-per-identity 0":      {"--xds-streams-per-identity", "0"},
		"--xds-connections-per-identity -1": {"--xds-connections-per-identity", "-1"},
		"--xds-streams-per-connection 0":    {"--xds-streams-per-connection", "0"},
		"--xds-request-rate 0":              {"--xds-request-rate", "0"},
		"--xds-request-burst 0":             {"--xds-request-burst", "0"},
		"--xds-handshake-timeout 500ms":     {"--xds-handshake-timeout", "500ms"},
		"--xds-peer-timeout 0s":             {"--xds-peer-timeout", "0"},
		"--xds-min-ping-interval 20s":       {"--xds-min-ping-interval", "20s"},
	}
	for want, args := range bad {
		c := Default()
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		c.RegisterFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: error %v, want one mentioning %q", args, err, want)
		}
	}
}

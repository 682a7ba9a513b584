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
	if Default().CertTTL != 24*time.Hour {
		t.Errorf("default cert TTL = %s, want 24h", Default().CertTTL)
	}
}

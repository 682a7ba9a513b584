package ca_test

import (
	"strings"
	"testing"

	"github.com/meshd/meshd/ca"
)

// FuzzCAMaterial feeds arbitrary bytes to the PEM parsers: no panic, and
// errors never quote private key bytes (rootca's FuzzCARecord feeds the
// record layout).
func FuzzCAMaterial(f *testing.F) {
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----\n"), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\n\n-----END EC PRIVATE KEY-----\n"), []byte{})
	f.Add([]byte{0x30, 0x82}, []byte("garbage"))
	f.Fuzz(func(t *testing.T, keyData, certData []byte) {
		if _, err := ca.ParseKeyPEM(keyData); err != nil && len(keyData) > 8 && strings.Contains(err.Error(), string(keyData)) {
			t.Fatalf("error quotes the key data: %v", err)
		}
		_, _ = ca.ParseCertsPEM(certData)
	})
}

func FuzzSPIFFEID(f *testing.F) {
	for _, s := range []string{"spiffe://cluster.local/ns/a/sa/b", "spiffe://x/ns//sa/b", "spiffe://x/ns/../sa/b", "http://x/ns/a/sa/b", "spiffe://x:80/ns/a/sa/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ca.ParseSPIFFEID(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("parsed %q but formats as %q", s, id.String())
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("parsed %q into an invalid identity: %v", s, err)
		}
	})
}

package rootca_test

import (
	"testing"
	"time"

	"github.com/meshd/meshd/ca/rootca"
)

// FuzzCARecord feeds arbitrary bytes to the CA record's parser in both
// layouts: no panic.
func FuzzCARecord(f *testing.F) {
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----\n"), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{0x30, 0x82}, []byte("garbage"))
	f.Fuzz(func(t *testing.T, keyData, certData []byte) {
		_, _ = rootca.FromData(map[string][]byte{rootca.KeyRootCert: certData, rootca.KeyCAKey: keyData}, time.Now())
		_, _ = rootca.FromData(map[string][]byte{rootca.KeyRootCert: certData, rootca.KeyCAKey: keyData, rootca.KeyCACert: certData}, time.Now())
	})
}

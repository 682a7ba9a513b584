package ca

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"strings"
	"testing"
	"time"
)

// TestValidateRefusesForeignOrWrongLeaves: the check run on every issued
// certificate refuses a leaf of another CA, a wrong SAN, a wrong key.
func TestValidateRefusesForeignOrWrongLeaves(t *testing.T) {
	now := time.Now()
	a, _ := NewRoot(rand.Reader, now, "cluster.local")
	b, _ := NewRoot(rand.Reader, now, "cluster.local")
	id := Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "web"}
	inB, _ := NewInternal(InternalConfig{Authority: b})
	foreign, err := inB.Issue(context.Background(), Request{Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := GenerateKey(rand.Reader, KeyECDSAP256)
	tests := map[string]struct {
		req  Request
		want string
	}{
		"issued by another CA": {Request{Identity: id}, "not issued by the signing CA"},
		"other SPIFFE ID":      {Request{Identity: Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "db"}}, "URI SANs"},
		"other key":            {Request{Identity: id, Key: otherKey}, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := a.validator().Validate([]*x509.Certificate{foreign.Leaf}, tc.req, now)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	inA, _ := NewInternal(InternalConfig{Authority: a})
	good, _ := inA.Issue(context.Background(), Request{Identity: id})
	if err := a.validator().Validate([]*x509.Certificate{good.Leaf}, Request{Identity: id}, now); err != nil {
		t.Fatalf("own leaf refused: %v", err)
	}
}

package sds_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"io"
	"log/slog"
	"math/big"
	"sync"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/sds"
)

// renewer issues at once (a self-signed leaf per watch) unless held, and
// counts the watches still running.
type renewer struct {
	mu      sync.Mutex
	hold    bool
	running int
	serial  int64
}

func (r *renewer) Watch(ctx context.Context, _ string, req ca.Request, onCert func(*ca.Certificate)) {
	r.mu.Lock()
	r.running++
	r.serial++
	serial, hold := r.serial, r.hold
	r.mu.Unlock()
	go func() {
		<-ctx.Done()
		r.mu.Lock()
		r.running--
		r.mu.Unlock()
	}()
	if hold {
		return
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	onCert(&ca.Certificate{Identity: req.Identity, Leaf: leaf, ChainPEM: []byte("chain"), KeyPEM: []byte("key"), BundlePEM: []byte("bundle")})
}

func (r *renewer) watches() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.running
}

func newManager(t *testing.T, r *renewer) (*sds.Manager, func() map[string][]*tlsv3.Secret) {
	t.Helper()
	var mu sync.Mutex
	got := map[string][]*tlsv3.Secret{}
	m, err := sds.New(sds.Config{Renewer: r, FirstCertTimeout: 200 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnSecrets: func(node string, s []*tlsv3.Secret) {
			mu.Lock()
			got[node] = append([]*tlsv3.Secret(nil), s...)
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	return m, func() map[string][]*tlsv3.Secret {
		mu.Lock()
		defer mu.Unlock()
		return got
	}
}

var (
	web    = ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "web"}
	client = ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}
)

// TestManagerSecretsFollowIdentity: a proxy's first stream gets its
// secrets; a second stream under the same identity shares them; one under
// another identity is refused with PermissionDenied and gets nothing; the
// renewals stop with the last reference.
func TestManagerSecretsFollowIdentity(t *testing.T) {
	r := &renewer{}
	m, got := newManager(t, r)
	ctx := context.Background()
	if err := m.Add(ctx, "web-0.demo", web, "web-0"); err != nil {
		t.Fatal(err)
	}
	secrets := got()["web-0.demo"]
	if len(secrets) != 2 || secrets[0].GetName() != sds.NameDefault || secrets[1].GetName() != sds.NameRootCA {
		t.Fatalf("secrets %v, want default and ROOTCA", secrets)
	}
	if err := m.Add(ctx, "web-0.demo", web, "web-0"); err != nil {
		t.Fatalf("a second stream of the same identity: %v", err)
	}
	err := m.Add(ctx, "web-0.demo", client, "web-0")
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("another identity for web-0's node: %v, want PermissionDenied", err)
	}
	if r.watches() != 1 || len(m.Certificates()) != 1 {
		t.Errorf("%d renewals running, %d certificates; want one for web-0", r.watches(), len(m.Certificates()))
	}
	if m.Remove("web-0.demo") {
		t.Error("the first Remove of two references ended the proxy")
	}
	if !m.Remove("web-0.demo") || m.Remove("web-0.demo") {
		t.Error("the last Remove did not end the proxy, or a third one did something")
	}
	waitUntil(t, func() bool { return r.watches() == 0 })
	if len(m.Certificates()) != 0 {
		t.Errorf("certificates after the last Remove: %v", m.Certificates())
	}
}

// TestManagerFirstCertTimeout: a proxy whose first certificate does not
// come gets an error, not a hang.
func TestManagerFirstCertTimeout(t *testing.T) {
	r := &renewer{hold: true}
	m, _ := newManager(t, r)
	if err := m.Add(context.Background(), "web-0.demo", web, "web-0"); err == nil {
		t.Fatal("no error without a certificate")
	}
	if _, err := sds.New(sds.Config{}); err == nil {
		t.Error("New without a Renewer: no error")
	}
}

// TestSecrets: default carries chain and key, ROOTCA the bundle, and
// Redact hides the key and nothing else.
func TestSecrets(t *testing.T) {
	c := &ca.Certificate{ChainPEM: []byte("CHAIN"), KeyPEM: []byte("KEY"), BundlePEM: []byte("BUNDLE")}
	d := sds.CertificateSecret(c)
	if string(d.GetTlsCertificate().GetCertificateChain().GetInlineBytes()) != "CHAIN" || string(d.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) != "KEY" {
		t.Errorf("default: %v", d)
	}
	b := sds.BundleSecret(c.BundlePEM)
	if b.GetName() != sds.NameRootCA || string(b.GetValidationContext().GetTrustedCa().GetInlineBytes()) != "BUNDLE" {
		t.Errorf("ROOTCA: %v", b)
	}
	red := sds.Redact(d)
	if red.GetTlsCertificate().GetPrivateKey().GetInlineString() != "[redacted]" || len(red.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) != 0 ||
		string(red.GetTlsCertificate().GetCertificateChain().GetInlineBytes()) != "CHAIN" {
		t.Errorf("redacted: %v", red)
	}
	if string(d.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) != "KEY" {
		t.Error("Redact changed its argument")
	}
	if sds.Redact(b) != b {
		t.Error("Redact of a secret without a key is not the same secret")
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

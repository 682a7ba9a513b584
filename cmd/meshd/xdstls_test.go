package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/ca/store"
)

func testAuthority(t *testing.T) *ca.Authority {
	t.Helper()
	a, err := rootca.LoadOrCreate(context.Background(), store.Files{Dir: t.TempDir()}, "meshd-ca", "cluster.local", rand.Reader, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Handshakes share one configuration until the authority or the serving
// certificate changes; then the next handshake gets the new ones.
func TestXDSTLSFollowsRotations(t *testing.T) {
	first := testAuthority(t)
	issuer, err := ca.NewInternal(ca.InternalConfig{Authority: first})
	if err != nil {
		t.Fatal(err)
	}
	creds := &credentials{issuer: issuer, serving: &atomic.Pointer[tls.Certificate]{}}
	get := xdsTLS(creds).GetConfigForClient
	if _, err := get(nil); err == nil {
		t.Fatal("a handshake before the serving certificate exists was accepted")
	}
	creds.serving.Store(&tls.Certificate{Certificate: [][]byte{[]byte("one")}})
	a, err := get(nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := get(nil); b != a {
		t.Error("two handshakes with nothing rotated got two configurations")
	}
	trusts := func(cfg *tls.Config, auth *ca.Authority) bool {
		want := x509.NewCertPool()
		want.AppendCertsFromPEM(auth.BundlePEM)
		return cfg.ClientCAs.Equal(want)
	}
	if !trusts(a, first) {
		t.Error("the configuration does not trust the authority's bundle")
	}

	creds.serving.Store(&tls.Certificate{Certificate: [][]byte{[]byte("two")}})
	c, _ := get(nil)
	if c == a || string(c.Certificates[0].Certificate[0]) != "two" {
		t.Error("a handshake after the serving certificate rotated did not get the new one")
	}

	second := testAuthority(t)
	issuer.SetAuthority(second)
	d, _ := get(nil)
	if d == c || !trusts(d, second) || trusts(d, first) {
		t.Error("a handshake after the authority rotated does not trust exactly the new bundle")
	}
	if e, _ := get(nil); e != d {
		t.Error("the configuration was not kept after the rotation")
	}
}

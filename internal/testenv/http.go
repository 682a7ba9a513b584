package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"time"
)

// adminHTTPClient is an HTTP client that trusts the apiserver and presents
// the admin certificate.
func (e *Env) adminHTTPClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.pki.caPEM)
	cert, err := tls.X509KeyPair(e.pki.adminPEM, e.pki.adminKeyPEM)
	if err != nil {
		panic(fmt.Sprintf("testenv: admin key pair: %v", err)) // generated above; cannot happen
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}}
}

// httpOK returns a check that succeeds when GET url answers 200.
func httpOK(url string, client *http.Client) func(context.Context) error {
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	return func(ctx context.Context) error {
		_, err := httpGet(ctx, client, url)
		return err
	}
}

// httpGet returns the body of a GET that answered 200.
func httpGet(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s: %.200s", url, resp.Status, body)
	}
	return body, nil
}

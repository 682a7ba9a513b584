package xds_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/xds/resource"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// TestSidecarMTLSRotationAndRestart runs the real Envoy against meshd over
// mutual TLS, in SotW and delta: the sidecar gets a listener that takes its
// certificate and bundle over SDS, serves mTLS with its SPIFFE ID, picks up a
// renewed certificate live without dropping an open connection, and comes
// back with its secrets after meshd restarts.
func TestSidecarMTLSRotationAndRestart(t *testing.T) {
	for _, api := range []bootstrap.APIType{bootstrap.SotW, bootstrap.Delta} {
		t.Run(string(api), func(t *testing.T) {
			pki := newTestPKI(t)
			addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			inPort := freePort(t)
			m := startMeshd(t, pki, addr)
			publishListener(t, m, inPort)
			envoy := startSidecar(t, pki, addr, api)

			conn := waitHandshake(t, pki, inPort)
			first := conn.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
			if body, err := get(conn); err != nil || !strings.Contains(body, "hello") {
				t.Fatalf("request over mTLS: %q, %v", body, err)
			}
			waitCerts(t, envoy, first)

			// Renewal: a new certificate is pushed; new handshakes use it,
			// the open connection stays up.
			m.renewer.renew(t, webNode)
			second := waitNewSerial(t, pki, inPort, first)
			waitCerts(t, envoy, second)
			if body, err := get(conn); err != nil || !strings.Contains(body, "hello") {
				t.Fatalf("open connection after renewal: %q, %v", body, err)
			}
			conn.Close()

			// Restart: Envoy reconnects, re-subscribes and gets its secrets.
			m.stop(t)
			m = startMeshd(t, pki, addr)
			t.Cleanup(func() { m.stop(t) })
			publishListener(t, m, inPort)
			waitSecretsServed(t, m, webNode)
			conn = waitHandshake(t, pki, inPort)
			defer conn.Close()
			if body, err := get(conn); err != nil || !strings.Contains(body, "hello") {
				t.Fatalf("request after restart: %q, %v", body, err)
			}
		})
	}
}

func publishListener(t *testing.T, m *meshd, port int) {
	t.Helper()
	err := m.pub.SetProxy(context.Background(), webNode, resource.Resources{resourcev3.ListenerType: []types.Resource{inboundListener(t, port)}})
	if err != nil {
		t.Fatal(err)
	}
}

// eventually retries f every 100ms for up to 30s.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

func waitHandshake(t *testing.T, pki *testPKI, port int) *tls.Conn {
	t.Helper()
	var conn *tls.Conn
	eventually(t, "mTLS handshake with the sidecar", func() (err error) {
		conn, err = meshClient(t, pki, port, webID)
		return err
	})
	return conn
}

func waitNewSerial(t *testing.T, pki *testPKI, port int, old string) string {
	t.Helper()
	var serial string
	eventually(t, "a handshake with a renewed certificate", func() error {
		c, err := meshClient(t, pki, port, webID)
		if err != nil {
			return err
		}
		defer c.Close()
		if serial = c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16); serial == old {
			return fmt.Errorf("still serial %s", old)
		}
		return nil
	})
	return serial
}

// waitCerts waits until Envoy's /certs lists the serial.
func waitCerts(t *testing.T, e *testenv.Envoy, serial string) {
	t.Helper()
	eventually(t, "Envoy /certs showing serial "+serial, func() error {
		body, err := e.Admin(context.Background(), "/certs")
		if err != nil {
			return err
		}
		if !strings.Contains(strings.ToLower(string(body)), `"serial_number": "`+serial+`"`) &&
			!strings.Contains(strings.ToLower(string(body)), `"serial_number": "0`+serial+`"`) {
			return fmt.Errorf("not in /certs:\n%.1500s", body)
		}
		return nil
	})
}

func waitSecretsServed(t *testing.T, m *meshd, node string) {
	t.Helper()
	eventually(t, "secrets served to "+node+" after restart", func() error {
		for _, p := range m.srv.Proxies() {
			if ts := p.Types[resourcev3.SecretType]; p.NodeID == node && ts != nil && ts.Responses > 0 && ts.AckedVersion != "" {
				return nil
			}
		}
		return fmt.Errorf("proxies: %+v", m.srv.Proxies())
	})
}

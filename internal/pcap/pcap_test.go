package pcap

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testenv"
)

// TestReadRealHandshake: tcpdump on loopback records a TLS 1.2 handshake
// and a TLS 1.3 one; the reader finds both with their negotiated version,
// cipher suite, group and SNI, the 1.2 server certificate in clear (serial
// matches) and none for 1.3, and the plaintext exchanged before TLS.
func TestReadRealHandshake(t *testing.T) {
	if os.Getuid() != 0 {
		testenv.Unavailable(t, os.ErrPermission)
	}
	if _, err := exec.LookPath("tcpdump"); err != nil {
		testenv.Unavailable(t, err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(424242), Subject: pkix.Name{CommonName: "pcap-test"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"pcap-test"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	port := lis.Addr().(*net.TCPAddr).Port
	accepted := 0
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			first := accepted == 0 // the first connection is plaintext
			accepted++
			go func() {
				defer c.Close()
				if first {
					buf := make([]byte, 64)
					n, _ := c.Read(buf)
					_, _ = c.Write(buf[:n])
					return
				}
				tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
				_ = tc.Handshake()
				_, _ = tc.Write([]byte("secret-after-handshake"))
			}()
		}
	}()
	stop := Tcpdump(t, "lo", 64, "tcp port "+strconv.Itoa(port))
	plain, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = plain.Write([]byte("hello-in-clear"))
	_, _ = plain.Read(make([]byte, 64))
	plain.Close()
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		c, err := net.Dial("tcp", lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: "pcap-test", MinVersion: v, MaxVersion: v,
			CurvePreferences: []tls.CurveID{tls.X25519}})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		_, _ = tc.Read(make([]byte, 64))
		tc.Close()
	}
	b := stop()
	capt, err := Read(b)
	if err != nil {
		t.Fatal(err)
	}
	var ours []Handshake // lo carries other TLS too
	for _, h := range capt.Handshakes {
		if int(h.Server.Port()) == port {
			ours = append(ours, h)
		}
	}
	if len(ours) != 2 {
		t.Fatalf("%d handshakes to port %d, want 2", len(ours), port)
	}
	if c := ours[0].ServerCert; c == nil || c.SerialNumber.Int64() != 424242 {
		t.Errorf("TLS 1.2 server certificate not read: %v", c)
	}
	if c := ours[1].ServerCert; c != nil {
		t.Errorf("TLS 1.3 certificate read in clear: %v", c.Subject)
	}
	for i, want := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		h := ours[i]
		if h.Version != want || h.CipherSuite == 0 || h.SNI != "pcap-test" {
			t.Errorf("handshake %d: version %#x suite %#x SNI %q; want version %#x, a suite, SNI pcap-test", i, h.Version, h.CipherSuite, h.SNI, want)
		}
	}
	if g := ours[1].Group; g != uint16(tls.X25519) {
		t.Errorf("TLS 1.3 key exchange group %#x, want X25519 (%#x)", g, uint16(tls.X25519))
	}
	if !capt.Contains("hello-in-clear") || capt.Contains("secret-after-handshake") {
		t.Error("plaintext search wrong")
	}
}

package e2e

import (
	"crypto/tls"
	"fmt"
	"sort"

	"github.com/meshd/meshd/internal/pcap"
)

// Wire is what a passive eavesdropper reads of the TLS handshakes in a
// capture.
type Wire struct {
	// Handshakes counts the TLS handshakes seen (a ClientHello).
	Handshakes int
	// Versions counts the negotiated versions ("TLS 1.3", "none" when no
	// ServerHello was seen), Groups the key exchange groups.
	Versions, Groups map[string]int
	// ServerPorts counts handshakes per server port (15012: to meshd).
	ServerPorts map[uint16]int
	// CertsInClear counts certificates read in clear; SPIFFEInClear
	// whether "spiffe://" appears anywhere in the captured payloads.
	CertsInClear  int
	SPIFFEInClear bool
}

func readWire(b []byte) (Wire, error) {
	c, err := pcap.Read(b)
	if err != nil {
		return Wire{}, fmt.Errorf("reading the capture: %w", err)
	}
	w := Wire{Handshakes: len(c.Handshakes), Versions: map[string]int{}, Groups: map[string]int{}, ServerPorts: map[uint16]int{}, SPIFFEInClear: c.Contains("spiffe://")}
	for _, h := range c.Handshakes {
		w.ServerPorts[h.Server.Port()]++
		v := "none"
		if h.Version != 0 {
			v = tls.VersionName(h.Version)
		}
		w.Versions[v]++
		if h.Group != 0 {
			w.Groups[tls.CurveID(h.Group).String()]++
		}
		if h.ServerCert != nil {
			w.CertsInClear++
		}
		if h.ClientCert != nil {
			w.CertsInClear++
		}
	}
	return w, nil
}

// OnlyTLS13 reports whether every handshake seen negotiated TLS 1.3 and
// nothing identifying crossed in clear.
func (w Wire) OnlyTLS13() bool {
	return w.Handshakes > 0 && w.Versions["TLS 1.3"] == w.Handshakes && w.CertsInClear == 0 && !w.SPIFFEInClear
}

func (w Wire) String() string {
	keys := func(m map[string]int) []string {
		var out []string
		for k, n := range m {
			out = append(out, fmt.Sprintf("%s:%d", k, n))
		}
		sort.Strings(out)
		return out
	}
	return fmt.Sprintf("%d handshakes (per server port %v), versions %v, groups %v, %d certificates in clear, spiffe:// in clear %v",
		w.Handshakes, w.ServerPorts, keys(w.Versions), keys(w.Groups), w.CertsInClear, w.SPIFFEInClear)
}

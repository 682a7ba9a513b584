// Package pcap reads what a passive eavesdropper recorded (tcpdump -w on a
// bridge or an interface): TCP streams reassembled per direction, the TLS
// handshakes in them (negotiated version, cipher suite, key exchange group,
// and the certificates where TLS 1.2 sends them in clear), and every payload
// byte to search for plaintext. Tests use it to judge the wire, not stats.
//
// Where it sits: test support; meshd's binary does not import it.
package pcap

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"
)

// Handshake is what a passive observer reads of one TLS handshake.
type Handshake struct {
	// Time is when the connection's first packet crossed the link.
	Time time.Time
	// Client and Server are the connection's ends.
	Client, Server netip.AddrPort
	// SNI is the server name the client asked for ("" without one).
	SNI string
	// Version is the negotiated protocol version (tls.VersionTLS13 ...),
	// read from the ServerHello (its supported_versions extension for TLS
	// 1.3); 0 when no ServerHello was seen.
	Version uint16
	// CipherSuite and Group are the ServerHello's choice (Group only for
	// TLS 1.3, from its key_share).
	CipherSuite, Group uint16
	// ServerCert is the server's leaf certificate as sent in clear (TLS 1.2;
	// nil when it was encrypted or not seen).
	ServerCert *x509.Certificate
	// ClientCert likewise, for mutual TLS.
	ClientCert *x509.Certificate
}

// Capture is a pcap file read back: TCP streams reassembled per direction.
type Capture struct {
	Handshakes []Handshake
	// Payload is every TCP payload byte, stream by stream, to search for
	// plaintext.
	Payload []byte
}

type flowKey struct{ src, dst netip.AddrPort }

type flow struct {
	key     flowKey
	first   time.Time
	next    uint32
	started bool
	data    []byte
}

// Read parses a classic pcap file of Ethernet frames (tcpdump -w on a
// bridge). Streams with a gap lose what follows the gap.
func Read(b []byte) (*Capture, error) {
	if len(b) < 24 {
		return nil, errors.New("pcap: too short")
	}
	var order binary.ByteOrder
	nanos := false
	for _, o := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
		switch o.Uint32(b) {
		case 0xa1b2c3d4:
			order = o
		case 0xa1b23c4d: // nanosecond timestamps
			order, nanos = o, true
		}
		if order != nil {
			break
		}
	}
	if order == nil {
		return nil, errors.New("pcap: not a pcap file")
	}
	if link := order.Uint32(b[20:]); link != 1 {
		return nil, fmt.Errorf("pcap: link type %d, want Ethernet (1)", link)
	}
	flows := map[flowKey]*flow{} // the current flow of each 4-tuple
	var all []*flow              // every flow in order of first packet
	for off := 24; off+16 <= len(b); {
		sec, frac, n := order.Uint32(b[off:]), order.Uint32(b[off+4:]), int(order.Uint32(b[off+8:]))
		off += 16
		if off+n > len(b) {
			break // truncated last record
		}
		ts := time.Unix(int64(sec), int64(frac)*1000)
		if nanos {
			ts = time.Unix(int64(sec), int64(frac))
		}
		addTCP(b[off:off+n], ts, flows, &all)
		off += n
	}
	c := &Capture{}
	for _, f := range all {
		c.Payload = append(c.Payload, f.data...)
	}
	c.Handshakes = handshakes(all)
	return c, nil
}

// addTCP appends an Ethernet/IPv4/TCP frame's payload to its flow.
func addTCP(frame []byte, ts time.Time, flows map[flowKey]*flow, all *[]*flow) {
	if len(frame) < 14 {
		return
	}
	eth := binary.BigEndian.Uint16(frame[12:])
	ip := frame[14:]
	if eth == 0x8100 && len(frame) >= 18 { // VLAN tag
		eth, ip = binary.BigEndian.Uint16(frame[16:]), frame[18:]
	}
	if eth != 0x0800 || len(ip) < 20 || ip[9] != 6 {
		return
	}
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < 20 || total > len(ip) || total < ihl+20 {
		return
	}
	tcp := ip[ihl:total]
	doff := int(tcp[12]>>4) * 4
	if doff < 20 || doff > len(tcp) {
		return
	}
	src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(tcp[0:]))
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(tcp[2:]))
	seq, flags, payload := binary.BigEndian.Uint32(tcp[4:]), tcp[13], tcp[doff:]
	k := flowKey{src, dst}
	f := flows[k]
	if f == nil || flags&0x02 != 0 && f.started && len(f.data) > 0 { // new flow, or a new SYN on a reused tuple
		f = &flow{key: k, first: ts}
		flows[k] = f
		*all = append(*all, f)
	}
	if flags&0x02 != 0 { // SYN
		f.next, f.started = seq+1, true
		return
	}
	if !f.started {
		f.next, f.started = seq, true // joined mid-stream
	}
	if len(payload) == 0 {
		return
	}
	end := seq + uint32(len(payload))
	switch d := int32(seq - f.next); {
	case d < 0 && int32(end-f.next) <= 0:
		return // retransmission of what we have
	case d < 0:
		payload = payload[-d:] // overlaps new data
	case d > 0:
		f.data = append(f.data, 0xde, 0xad) // a gap: poisons the TLS parse from here
	}
	f.data = append(f.data, payload...)
	f.next = end
}

// handshakes pairs each client->server flow that starts with a TLS
// ClientHello with the reverse flow of the same connection and reads what
// is sent in clear.
func handshakes(all []*flow) []Handshake {
	var out []Handshake
	for i, f := range all {
		msgs := tlsHandshakeMessages(f.data)
		if len(msgs) == 0 || msgs[0].typ != typeClientHello {
			continue
		}
		h := Handshake{Time: f.first, Client: f.key.src, Server: f.key.dst, SNI: serverName(msgs[0].body)}
		h.ClientCert = certOf(msgs)
		if r := reverseOf(all, i); r != nil {
			rmsgs := tlsHandshakeMessages(r.data)
			if len(rmsgs) > 0 && rmsgs[0].typ == typeServerHello {
				h.Version, h.CipherSuite, h.Group = serverHello(rmsgs[0].body)
			}
			h.ServerCert = certOf(rmsgs)
		}
		out = append(out, h)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out
}

// reverseOf finds the server->client flow of all[i]'s connection: the
// first reverse flow that began after it (a reused 4-tuple has several).
func reverseOf(all []*flow, i int) *flow {
	want := flowKey{all[i].key.dst, all[i].key.src}
	for _, r := range all[i+1:] {
		if r.key == want {
			return r
		}
	}
	for j := i - 1; j >= 0; j-- { // the SYN-ACK's flow may be listed first
		if all[j].key == want {
			return all[j]
		}
	}
	return nil
}

const (
	typeClientHello = 1
	typeServerHello = 2
	typeCertificate = 11

	extServerName        = 0
	extSupportedVersions = 43
	extKeyShare          = 51
)

type hsMsg struct {
	typ  byte
	body []byte
}

// tlsHandshakeMessages reads the handshake messages of a TLS byte stream
// up to the first ChangeCipherSpec (after it everything is encrypted).
func tlsHandshakeMessages(s []byte) []hsMsg {
	var hs []byte
	for len(s) >= 5 {
		typ, n := s[0], int(binary.BigEndian.Uint16(s[3:]))
		if s[1] != 3 || len(s) < 5+n {
			break
		}
		if typ == 20 || typ == 23 { // ChangeCipherSpec, application data
			break
		}
		if typ == 22 {
			hs = append(hs, s[5:5+n]...)
		}
		s = s[5+n:]
	}
	var msgs []hsMsg
	for len(hs) >= 4 {
		n := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
		if len(hs) < 4+n {
			break
		}
		msgs = append(msgs, hsMsg{hs[0], hs[4 : 4+n]})
		hs = hs[4+n:]
	}
	return msgs
}

// helloExtensions returns the extensions of a ClientHello or ServerHello
// body by type (nil when malformed).
func helloExtensions(body []byte, client bool) map[uint16][]byte {
	r := reader(body)
	r.skip(2 + 32)      // legacy_version, random
	r.skip(int(r.u8())) // session id
	if client {
		r.skip(int(r.u16())) // cipher suites
		r.skip(int(r.u8()))  // compression methods
	} else {
		r.skip(2 + 1) // cipher suite, compression method
	}
	ext := reader(r.bytes(int(r.u16())))
	if r == nil || ext == nil {
		return nil
	}
	out := map[uint16][]byte{}
	for len(ext) >= 4 {
		typ := ext.u16()
		data := ext.bytes(int(ext.u16()))
		if ext == nil {
			return nil
		}
		out[typ] = data
	}
	return out
}

// serverHello reads the negotiated version, cipher suite and (TLS 1.3) key
// exchange group.
func serverHello(body []byte) (version, suite, group uint16) {
	if len(body) < 2+32+1 {
		return 0, 0, 0
	}
	version = binary.BigEndian.Uint16(body)
	if sid := int(body[34]); len(body) >= 35+sid+2 {
		suite = binary.BigEndian.Uint16(body[35+sid:])
	}
	ext := helloExtensions(body, false)
	if v := ext[extSupportedVersions]; len(v) == 2 {
		version = binary.BigEndian.Uint16(v)
	}
	if ks := ext[extKeyShare]; len(ks) >= 2 {
		group = binary.BigEndian.Uint16(ks)
	}
	return version, suite, group
}

// serverName reads a ClientHello's SNI host name.
func serverName(body []byte) string {
	sni := reader(helloExtensions(body, true)[extServerName])
	sni.skip(2) // list length
	for len(sni) >= 3 {
		typ := sni.u8()
		name := sni.bytes(int(sni.u16()))
		if sni == nil {
			break
		}
		if typ == 0 {
			return string(name)
		}
	}
	return ""
}

// reader consumes big-endian fields; it becomes nil once a read runs past
// its end, and every later read returns zero.
type reader []byte

func (r *reader) bytes(n int) []byte {
	if *r == nil || n > len(*r) {
		*r = nil
		return nil
	}
	b := (*r)[:n:n]
	*r = (*r)[n:]
	return b
}

func (r *reader) skip(n int) { r.bytes(n) }

func (r *reader) u8() byte {
	if b := r.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if b := r.bytes(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

// certOf returns the leaf of the first TLS 1.2 Certificate message.
func certOf(msgs []hsMsg) *x509.Certificate {
	for _, m := range msgs {
		if m.typ != typeCertificate || len(m.body) < 6 {
			continue
		}
		n := int(m.body[3])<<16 | int(m.body[4])<<8 | int(m.body[5])
		if len(m.body) < 6+n || n == 0 {
			return nil
		}
		c, err := x509.ParseCertificate(m.body[6 : 6+n])
		if err != nil {
			return nil
		}
		return c
	}
	return nil
}

// Contains reports whether the plaintext appears anywhere in the capture.
func (c *Capture) Contains(plain string) bool { return bytes.Contains(c.Payload, []byte(plain)) }

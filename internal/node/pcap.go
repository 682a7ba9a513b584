// Package node holds the real-node end-to-end test (meshd deployed from
// deploy/ into a one-node cluster started by hack/cluster.sh, workloads in
// real pods) and what it needs to read a capture: the TLS handshakes an
// eavesdropper on the node's bridge sees.
//
// Where it sits: test-only; nothing in meshd imports it.
package node

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
	first   time.Time
	next    uint32
	started bool
	data    []byte
}

// ReadPcap parses a classic pcap file of Ethernet frames (tcpdump -w on a
// bridge). Streams with a gap lose what follows the gap.
func ReadPcap(b []byte) (*Capture, error) {
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
	flows := map[flowKey]*flow{}
	var keys []flowKey
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
		addTCP(b[off:off+n], ts, flows, &keys)
		off += n
	}
	c := &Capture{}
	for _, k := range keys {
		c.Payload = append(c.Payload, flows[k].data...)
	}
	c.Handshakes = handshakes(flows, keys)
	return c, nil
}

// addTCP appends an Ethernet/IPv4/TCP frame's payload to its flow.
func addTCP(frame []byte, ts time.Time, flows map[flowKey]*flow, keys *[]flowKey) {
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
		if f == nil {
			*keys = append(*keys, k)
		}
		f = &flow{first: ts}
		flows[k] = f
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
// ClientHello with its reverse flow and reads the certificates sent in
// clear.
func handshakes(flows map[flowKey]*flow, keys []flowKey) []Handshake {
	var out []Handshake
	for _, k := range keys {
		f := flows[k]
		msgs := tlsHandshakeMessages(f.data)
		if len(msgs) == 0 || msgs[0].typ != 1 { // ClientHello
			continue
		}
		h := Handshake{Time: f.first, Client: k.src, Server: k.dst}
		h.ClientCert = certOf(msgs)
		if r := flows[flowKey{k.dst, k.src}]; r != nil {
			h.ServerCert = certOf(tlsHandshakeMessages(r.data))
		}
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out
}

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

// certOf returns the leaf of the first TLS 1.2 Certificate message.
func certOf(msgs []hsMsg) *x509.Certificate {
	for _, m := range msgs {
		if m.typ != 11 || len(m.body) < 6 {
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

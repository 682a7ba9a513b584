package xds

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/meshd/meshd/ca"
)

// chunkConn returns data in reads of random sizes, then err; with the
// last bytes if tail is set (as a socket may).
type chunkConn struct {
	net.Conn
	data []byte
	rnd  *rand.Rand
	err  error
	tail bool
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, c.err
	}
	n := copy(p, c.data[:1+c.rnd.IntN(min(len(c.data), len(p)))])
	c.data = c.data[n:]
	if len(c.data) == 0 && c.tail {
		return n, c.err
	}
	return n, nil
}

// records makes a stream of TLS-framed records of random lengths (some
// empty, some full size), and their boundaries.
func records(rnd *rand.Rand, n int) (stream []byte, ends []int) {
	for range n {
		var size int
		switch rnd.IntN(4) {
		case 0:
			size = rnd.IntN(64)
		case 1:
			size = 16384 + 256
		default:
			size = rnd.IntN(17000)
		}
		stream = append(stream, 23, 3, 3, byte(size>>8), byte(size))
		for range size {
			stream = append(stream, byte(rnd.IntN(256)))
		}
		ends = append(ends, len(stream))
	}
	return stream, ends
}

func TestRecordConnStopsAtRecordEnds(t *testing.T) {
	for seed := range uint64(200) {
		rnd := rand.New(rand.NewPCG(seed, 7))
		stream, ends := records(rnd, 1+rnd.IntN(12))
		wantErr := io.EOF
		if seed%3 == 0 {
			wantErr = errors.New("connection reset")
		}
		c := newRecordConn(&chunkConn{data: bytes.Clone(stream), rnd: rnd, err: wantErr, tail: seed%2 == 0})
		var got []byte
		var err error
		for err == nil {
			p := make([]byte, 1+rnd.IntN(40000))
			var n int
			n, err = c.Read(p)
			// No read spans the end of a record.
			start, end := len(got), len(got)+n
			for _, e := range ends {
				if start < e && e < end {
					t.Fatalf("seed %d: a read of [%d, %d) crosses the record end at %d", seed, start, end, e)
				}
			}
			got = append(got, p[:n]...)
		}
		if !errors.Is(err, wantErr) {
			t.Fatalf("seed %d: read ended with %v, want %v", seed, err, wantErr)
		}
		if !bytes.Equal(got, stream) {
			t.Fatalf("seed %d: got %d bytes, not the %d sent (or not in order)", seed, len(got), len(stream))
		}
		if c.pending != nil || c.pend != nil {
			t.Fatalf("seed %d: a buffer is still held after the stream ended", seed)
		}
	}
}

// tlsPair is a TLS connection over loopback whose server side reads
// through wrap.
func tlsPair(tb testing.TB, cfg *tls.Config, wrap func(net.Conn) net.Conn) (client, server *tls.Conn) {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	raw, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	sraw := <-accepted
	if sraw == nil {
		tb.Fatal("accept failed")
	}
	server = tls.Server(wrap(sraw), cfg)
	// Full-size records from the first byte, as Envoy (BoringSSL) sends
	// them; Go's own clients start small and grow their records.
	client = tls.Client(raw, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, DynamicRecordSizingDisabled: true})
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		tb.Fatal(err)
	}
	if err := <-errc; err != nil {
		tb.Fatal(err)
	}
	return client, server
}

// serverTLS is a TLS 1.3 server configuration with a certificate of the
// project's internal CA.
func serverTLS(tb testing.TB) *tls.Config {
	tb.Helper()
	root, err := ca.NewRoot(crand.Reader, time.Now(), "cluster.local")
	if err != nil {
		tb.Fatal(err)
	}
	issuer, err := ca.NewInternal(ca.InternalConfig{Authority: root})
	if err != nil {
		tb.Fatal(err)
	}
	c, err := issuer.Issue(context.Background(), ca.Request{Identity: ca.Identity{TrustDomain: "cluster.local", Namespace: "meshd-system", ServiceAccount: "meshd"}})
	if err != nil {
		tb.Fatal(err)
	}
	kp, err := tls.X509KeyPair(c.ChainPEM, c.KeyPEM)
	if err != nil {
		tb.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS13}
}

// Through crypto/tls, with messages of several full records (as a SotW
// request naming 1,000 resources is), every byte arrives in order.
func TestRecordConnUnderTLS(t *testing.T) {
	client, server := tlsPair(t, serverTLS(t), func(c net.Conn) net.Conn { return newRecordConn(c) })
	defer client.Close()
	defer server.Close()
	rnd := rand.New(rand.NewPCG(1, 2))
	var sent bytes.Buffer
	go func() {
		for range 50 {
			msg := make([]byte, 1+rnd.IntN(50000))
			for i := range msg {
				msg[i] = byte(i * 7)
			}
			sent.Write(msg)
			if _, err := client.Write(msg); err != nil {
				return
			}
		}
		client.CloseWrite()
	}()
	got, err := io.ReadAll(server)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sent.Bytes()) {
		t.Fatalf("the server read %d bytes, not the %d sent", len(got), sent.Len())
	}
}

// readPaths are the two ways the benchmarks read: directly, and through a
// recordConn.
var readPaths = []struct {
	name string
	wrap func(net.Conn) net.Conn
}{
	{"direct", func(c net.Conn) net.Conn { return c }},
	{"recordConn", func(c net.Conn) net.Conn { return newRecordConn(c) }},
}

// BenchmarkTLSReadBuffer reports the heap each server-side TLS connection
// keeps once it has read a 40 KB request (a SotW request naming 1,000
// resources), read directly and through a recordConn.
func BenchmarkTLSReadBuffer(b *testing.B) {
	for _, tc := range readPaths {
		b.Run(tc.name, func(b *testing.B) {
			const conns = 100
			cfg := serverTLS(b)
			msg := bytes.Repeat([]byte("x"), 40<<10)
			var perConn float64
			for b.Loop() {
				var clients, servers []*tls.Conn
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				for range conns {
					c, s := tlsPair(b, cfg, tc.wrap)
					clients, servers = append(clients, c), append(servers, s)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				handshaken := after.HeapAlloc - before.HeapAlloc
				for i := range conns {
					for range 3 {
						go clients[i].Write(msg)
						buf := make([]byte, len(msg))
						_ = servers[i].SetReadDeadline(time.Now().Add(10 * time.Second))
						if _, err := io.ReadFull(servers[i], buf); err != nil {
							b.Fatal(err)
						}
					}
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				perConn = float64(after.HeapAlloc-before.HeapAlloc-handshaken) / conns
				runtime.KeepAlive(servers)
				for i := range conns {
					clients[i].Close()
					servers[i].Close()
				}
			}
			b.ReportMetric(perConn, "B-kept-after-read/conn")
		})
	}
}

// BenchmarkTLSSmallReads reads 100-byte records (an ACK's size), one per
// client write, directly and through a recordConn: the cost it adds to
// the read path of every ACK.
func BenchmarkTLSSmallReads(b *testing.B) {
	for _, tc := range readPaths {
		b.Run(tc.name, func(b *testing.B) {
			client, server := tlsPair(b, serverTLS(b), tc.wrap)
			defer server.Close()
			msg := bytes.Repeat([]byte("a"), 100)
			go func() {
				defer client.Close()
				for {
					if _, err := client.Write(msg); err != nil {
						return
					}
				}
			}()
			buf := make([]byte, len(msg))
			for b.Loop() {
				if _, err := io.ReadFull(server, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

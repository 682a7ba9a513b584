package xds

import (
	"bytes"
	"net"
	"sync"
)

// recordConn gives crypto/tls no byte past the end of the TLS record it is
// reading.
//
// crypto/tls reads each record into a per-connection buffer that never
// shrinks, and asks the connection for as much as that buffer has room
// for. When a read fills the buffer, or leaves the start of the next
// record in it, the buffer doubles. A proxy's first subscription (1,000
// names, about 40 KB, three full records) leaves ~40 KB behind for the life
// of the connection: 29-39 MB at 1,000 proxies, the largest single
// per-proxy allocation in meshd's heap.
//
// recordConn hands over a record that fits the room whole, and a larger
// one as its header first, then its body, never a byte past its end:
// crypto/tls, knowing the length from the header, grows its buffer once to
// the record's size (~18 KB for a full record) and keeps it there.
//
// Reads still go straight into crypto/tls's buffer, one system call as
// before: what a read brings past the end of what is handed over is set
// aside in a pooled buffer and handed over by the following reads, so it
// costs a copy, not a system call, and no memory once handed over.
type recordConn struct {
	net.Conn
	hdr  [recordHeaderLen]byte
	nhdr int // bytes of the current record's header handed over
	left int // bytes of its body not yet handed over, once the header is
	// pending holds bytes read but not yet handed over; pend is the
	// pooled buffer behind it.
	pend    *[]byte
	pending []byte
	err     error // the read error that came with pending
}

const (
	recordHeaderLen = 5
	// pendingSize holds what one read can bring past a record's end: the
	// caller's buffer, about one record (larger ones are allocated).
	pendingSize = 20 << 10
)

var pendingPool = sync.Pool{New: func() any { b := make([]byte, pendingSize); return &b }}

func newRecordConn(c net.Conn) *recordConn { return &recordConn{Conn: c} }

// Read hands over bytes up to the end of the current record at most.
func (c *recordConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(c.pending) > 0 {
		n := c.upTo(c.pending[:min(len(p), len(c.pending))], len(p))
		copy(p, c.pending[:n])
		c.pending = c.pending[n:]
		if len(c.pending) > 0 {
			return n, nil
		}
		if cap(*c.pend) == pendingSize {
			pendingPool.Put(c.pend)
		}
		c.pend, c.pending = nil, nil
		err := c.err
		c.err = nil
		return n, err
	}
	m, err := c.Conn.Read(p)
	if m <= 0 {
		return m, err
	}
	n := c.upTo(p[:m], len(p))
	if n < m {
		c.setAside(p[n:m])
		c.err, err = err, nil
	}
	return n, err
}

// upTo accounts for handing over b up to the end of the current record's
// header, or of its body, and returns how many bytes of b that is. A whole
// record (header and body) goes over at once if it leaves the caller room
// of at least bytes.MinRead: crypto/tls reads on into its buffer's room,
// and grows it when less is left.
func (c *recordConn) upTo(b []byte, room int) int {
	if c.nhdr == 0 && len(b) >= recordHeaderLen {
		if n := recordHeaderLen + (int(b[3])<<8 | int(b[4])); n <= len(b) && n <= room-bytes.MinRead {
			return n
		}
	}
	var n int
	if c.nhdr < recordHeaderLen {
		n = copy(c.hdr[c.nhdr:], b)
		if c.nhdr += n; c.nhdr == recordHeaderLen {
			c.left = int(c.hdr[3])<<8 | int(c.hdr[4])
		}
	} else {
		n = min(c.left, len(b))
		c.left -= n
	}
	if c.nhdr == recordHeaderLen && c.left == 0 {
		c.nhdr = 0 // the record is complete
	}
	return n
}

func (c *recordConn) setAside(b []byte) {
	if len(b) <= pendingSize {
		c.pend = pendingPool.Get().(*[]byte)
	} else {
		big := make([]byte, len(b))
		c.pend = &big
	}
	c.pending = (*c.pend)[:copy(*c.pend, b)]
}

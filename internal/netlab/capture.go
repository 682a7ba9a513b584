package netlab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Capture is tcpdump recording every TCP packet crossing the lab's bridge:
// the eavesdropper on the link between the pods.
type Capture struct {
	Path string
	proc *Proc
}

// Capture starts tcpdump on the bridge and waits until it listens.
func (l *Lab) Capture(ctx context.Context, name string) (*Capture, error) {
	path := filepath.Join(l.Dir, name+".pcap")
	// Immediate mode hands every packet over as it comes (no batching in
	// the kernel's ring that a stop would lose), with a ring of 16 MiB.
	p, err := l.Start("tcpdump-"+name, ProcOptions{}, "tcpdump", "-i", l.Bridge, "-nn", "-U", "--immediate-mode", "-B", "16384", "-s", "0", "-w", path, "tcp")
	if err != nil {
		return nil, err
	}
	for !strings.Contains(p.Log(), "listening on") {
		if p.Exited() {
			return nil, fmt.Errorf("netlab: tcpdump ended: %s", p.Log())
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return &Capture{Path: path, proc: p}, nil
}

// Stop ends the capture (tcpdump flushes on SIGTERM) and returns the raw
// pcap bytes.
func (c *Capture) Stop() ([]byte, error) {
	time.Sleep(300 * time.Millisecond) // packets still on their way to tcpdump
	c.proc.Stop()
	return os.ReadFile(c.Path)
}

// Count returns how many captured packets match a tcpdump filter
// expression (read back from the file).
func (c *Capture) Count(ctx context.Context, filter string) (int, error) {
	out, err := exec.CommandContext(ctx, "tcpdump", "-r", c.Path, "-nn", filter).Output()
	if err != nil {
		return 0, fmt.Errorf("netlab: tcpdump -r %s %q: %w", c.Path, filter, err)
	}
	return bytes.Count(out, []byte("\n")), nil
}

// TLSClientHellos is the filter for TLS handshake records carrying a
// ClientHello.
const TLSClientHellos = "tcp[((tcp[12]&0xf0)>>2)]=0x16 and tcp[((tcp[12]&0xf0)>>2)+5]=0x01"

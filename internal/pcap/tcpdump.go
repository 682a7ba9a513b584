package pcap

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Tcpdump records TCP on an interface into a pcap file, in immediate mode
// with a ring of ringMiB, from the moment it returns (tcpdump listening and
// settled). The returned stop ends it once (later calls return nil), after
// a pause for packets still on their way, and returns the file; the test's
// clean-up stops it too.
func Tcpdump(t testing.TB, iface string, ringMiB int, filter string) (stop func() []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), iface+".pcap")
	cmd := exec.Command("tcpdump", "-i", iface, "-nn", "-U", "--immediate-mode", "-B", strconv.Itoa(ringMiB<<10), "-s", "0", "-w", path, filter)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var seen []byte
	for !strings.Contains(string(seen), "listening on") {
		buf := make([]byte, 512)
		n, err := stderr.Read(buf)
		if err != nil {
			t.Fatalf("tcpdump: %v: %s", err, seen)
		}
		seen = append(seen, buf[:n]...)
	}
	time.Sleep(time.Second)
	stopped := false
	stop = func() []byte {
		if stopped {
			return nil
		}
		stopped = true
		time.Sleep(time.Second)
		_ = cmd.Process.Signal(os.Interrupt)
		rest := make([]byte, 1024)
		n, _ := stderr.Read(rest)
		_ = cmd.Wait()
		t.Logf("tcpdump on %s: %s", iface, strings.ReplaceAll(strings.TrimSpace(string(rest[:n])), "\n", "; "))
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	t.Cleanup(func() { stop() })
	return stop
}

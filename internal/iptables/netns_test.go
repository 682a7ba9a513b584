package iptables_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/meshd/meshd/internal/iptables"
	"github.com/meshd/meshd/internal/testenv"
)

// The test binary doubles as the in-namespace helper: with MESHD_IPT_HELPER
// set it listens or dials instead of running tests.
func TestMain(m *testing.M) {
	switch mode, arg, _ := strings.Cut(os.Getenv("MESHD_IPT_HELPER"), "="); mode {
	case "listen":
		listen(arg)
	case "dial":
		dial(arg)
	default:
		os.Exit(m.Run())
	}
}

// listen accepts on each port of arg ("15001,15006") and answers every
// connection with "<port> <original destination>".
func listen(ports string) {
	for _, p := range strings.Split(ports, ",") {
		l, err := net.Listen("tcp4", "0.0.0.0:"+p)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s %s\n", p, originalDst(c.(*net.TCPConn)))
				c.Close()
			}
		}()
	}
	select {}
}

// originalDst reads SO_ORIGINAL_DST, where REDIRECT keeps the real destination.
func originalDst(c *net.TCPConn) string {
	raw, err := c.SyscallConn()
	if err != nil {
		return "error:" + err.Error()
	}
	var addr syscall.RawSockaddrInet4
	var sockErr error
	_ = raw.Control(func(fd uintptr) {
		size := uint32(unsafe.Sizeof(addr))
		const soOriginalDst = 80
		_, _, errno := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.SOL_IP, soOriginalDst,
			uintptr(unsafe.Pointer(&addr)), uintptr(unsafe.Pointer(&size)), 0)
		if errno != 0 {
			sockErr = errno
		}
	})
	if sockErr != nil {
		return "error:" + sockErr.Error()
	}
	port := int(addr.Port>>8 | addr.Port<<8)
	return fmt.Sprintf("%s:%d", netip.AddrFrom4(addr.Addr), port)
}

// dial connects to addr and prints the listener's answer; as the uid in
// MESHD_IPT_UID and from the address in MESHD_IPT_FROM when set (as the
// sidecar does: its own connections, and from 127.0.0.6 to the app).
func dial(addr string) {
	d := net.Dialer{Timeout: 2 * time.Second}
	if from := os.Getenv("MESHD_IPT_FROM"); from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	if uid := os.Getenv("MESHD_IPT_UID"); uid != "" {
		id, err := strconv.Atoi(uid)
		if err == nil {
			err = syscall.Setgid(id)
		}
		if err == nil {
			err = syscall.Setuid(id)
		}
		if err != nil {
			fmt.Println("setuid:", err)
			os.Exit(3)
		}
	}
	c, err := d.Dial("tcp4", addr)
	if err != nil {
		fmt.Println("dial error:", err)
		os.Exit(3)
	}
	line, _ := bufio.NewReader(c).ReadString('\n')
	fmt.Print(line)
}

type netns struct{ name string }

func (n netns) run(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Run implements iptables.Runner inside the namespace.
func (n netns) Run(ctx context.Context, stdin, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %v: %w: %s", name, args, err, out)
	}
	return nil
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
}

// twoHosts makes a pod namespace (198.18.250.1) and a peer (198.18.250.2)
// joined by a veth pair, removed when the test ends.
func twoHosts(t *testing.T) (pod, peer netns) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, fmt.Errorf("network namespaces need root"))
	}
	for _, tool := range []string{"ip", "iptables", "iptables-restore", "setpriv", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Unavailable(t, err)
		}
	}
	id := fmt.Sprintf("%d", os.Getpid()%100000)
	pod, peer = netns{"meshd-ipt-pod-" + id}, netns{"meshd-ipt-peer-" + id}
	for _, n := range []netns{pod, peer} {
		sh(t, "ip", "netns", "add", n.name)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.name).Run() })
		sh(t, "ip", "-n", n.name, "link", "set", "lo", "up")
	}
	sh(t, "ip", "link", "add", "mipt"+id, "netns", pod.name, "type", "veth", "peer", "name", "mipp"+id, "netns", peer.name)
	for n, cfg := range map[netns][2]string{pod: {"mipt" + id, "198.18.250.1/24"}, peer: {"mipp" + id, "198.18.250.2/24"}} {
		sh(t, "ip", "-n", n.name, "addr", "add", cfg[1], "dev", cfg[0])
		sh(t, "ip", "-n", n.name, "link", "set", cfg[0], "up")
	}
	return pod, peer
}

// TestInterceptionWithRealTraffic applies the rules in a real network
// namespace and checks, with real connections, where traffic lands.
func TestInterceptionWithRealTraffic(t *testing.T) {
	pod, peer := twoHosts(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := iptables.Config{ExcludeInboundPorts: []uint16{22}, ExcludeOutboundPorts: []uint16{5432}}
	for range 2 { // twice: idempotent
		if err := iptables.Apply(ctx, pod, cfg); err != nil {
			t.Fatal(err)
		}
	}
	saved, err := pod.run(ctx, nil, "iptables-save", "-t", "nat")
	if err != nil {
		t.Fatal(err)
	}
	for _, jump := range []string{"-A PREROUTING -p tcp -j MESHD_INBOUND", "-A OUTPUT -p tcp -j MESHD_OUTPUT"} {
		if n := strings.Count(saved, jump); n != 1 {
			t.Errorf("%q appears %d times after applying twice, want once:\n%s", jump, n, saved)
		}
	}

	self, _ := os.Executable()
	helper := exec.CommandContext(ctx, "ip", "netns", "exec", pod.name, self)
	helper.Env = append(os.Environ(), "MESHD_IPT_HELPER=listen=15001,15006")
	helper.Stderr = os.Stderr
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = helper.Process.Kill(); _ = helper.Wait() })

	dialFrom := func(n netns, addr string, env ...string) string {
		var out string
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			out, _ = n.run(ctx, append([]string{"MESHD_IPT_HELPER=dial=" + addr}, env...), self)
			if !strings.Contains(out, "connection refused") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		return strings.TrimSpace(out)
	}
	if got := dialFrom(pod, "198.18.250.2:80"); got != "15001 198.18.250.2:80" {
		t.Errorf("outbound from the app: landed as %q, want on 15001 with original destination 198.18.250.2:80", got)
	}
	if got := dialFrom(peer, "198.18.250.1:8080"); got != "15006 198.18.250.1:8080" {
		t.Errorf("inbound to the pod: landed as %q, want on 15006 with original destination 198.18.250.1:8080", got)
	}
	// The sidecar's connection to its own pod's address (the pod calling
	// its own service) goes to its inbound listener, as a peer's would;
	// its forwarding to the app from 127.0.0.6 does not (nothing listens
	// on 8080: refused).
	if got := dialFrom(pod, "198.18.250.1:8080", "MESHD_IPT_UID=1337"); got != "15006 198.18.250.1:8080" {
		t.Errorf("the sidecar's connection to its own pod: landed as %q, want on 15006 with original destination 198.18.250.1:8080", got)
	}
	if got, _ := pod.run(ctx, []string{"MESHD_IPT_HELPER=dial=198.18.250.1:8080", "MESHD_IPT_UID=1337", "MESHD_IPT_FROM=127.0.0.6"}, self); !strings.Contains(got, "refused") {
		t.Errorf("the sidecar's forwarding to the app from 127.0.0.6: %q, want it to reach port 8080 itself (refused)", got)
	}
	// Not redirected: the sidecar's own traffic, loopback, excluded ports.
	notRedirected := map[string][]string{
		"uid 1337":           {"setpriv", "--reuid", "1337", "--regid", "1337", "--clear-groups", "bash", "-c", "exec 3<>/dev/tcp/198.18.250.2/80"},
		"loopback":           {"bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/80"},
		"excluded port 5432": {"bash", "-c", "exec 3<>/dev/tcp/198.18.250.2/5432"},
	}
	for name, cmd := range notRedirected {
		out, err := pod.run(ctx, nil, cmd[0], cmd[1:]...)
		if err == nil || !strings.Contains(out, "refused") {
			t.Errorf("%s: connection to a closed port was not refused (redirected?): err=%v out=%q", name, err, out)
		}
	}
	if out, err := peer.run(ctx, nil, "bash", "-c", "exec 3<>/dev/tcp/198.18.250.1/22"); err == nil || !strings.Contains(out, "refused") {
		t.Errorf("excluded inbound port 22 was redirected: err=%v out=%q", err, out)
	}

	if err := iptables.Cleanup(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if saved, _ := pod.run(ctx, nil, "iptables-save", "-t", "nat"); strings.Contains(saved, "MESHD_") {
		t.Errorf("rules left after cleanup:\n%s", saved)
	}
	if got, _ := pod.run(ctx, []string{"MESHD_IPT_HELPER=dial=198.18.250.2:80"}, self); strings.HasPrefix(got, "15001") {
		t.Errorf("still redirected after cleanup: %q", got)
	}
}

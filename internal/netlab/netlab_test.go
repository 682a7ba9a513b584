package netlab_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/netlab"
	"github.com/meshd/meshd/internal/testenv"
)

// With MESHD_NETLAB_OWNER set, the test binary is a lab's owner that dies
// without closing it: it makes a lab with a pod running a shell that forks
// a sleep (as nginx forks its workers), says "ready <bridge>", and waits to
// be killed.
func TestMain(m *testing.M) {
	if os.Getenv("MESHD_NETLAB_OWNER") != "" {
		owner()
		return
	}
	os.Exit(m.Run())
}

func owner() {
	ctx := context.Background()
	l, err := netlab.New(ctx)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	p, err := l.AddPod(ctx, "p")
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	if _, err := l.Start("sh", netlab.ProcOptions{Pod: p}, "sh", "-c", "sleep 600 & wait"); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("ready", l.Bridge, p.NetNS)
	select {}
}

// A lab whose owner was killed (no Close) is removed by the next New: its
// namespace, its bridge, and the processes left in the namespace, also
// those its processes forked.
func TestDeadOwnersLabIsReaped(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, errors.New("network namespaces need root"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), "MESHD_NETLAB_OWNER=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("owner: %v (%q)", err, line)
	}
	var bridge, ns string
	if _, err := fmt.Sscanf(line, "ready %s %s", &bridge, &ns); err != nil {
		t.Fatalf("owner said %q", line)
	}
	// The forked sleep, in the pod's namespace.
	var pids []int
	for deadline := time.Now().Add(10 * time.Second); len(pids) < 2 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		pids = nsPids(t, ns)
	}
	if len(pids) < 2 {
		t.Fatalf("namespace %s holds processes %v, want the shell and its sleep", ns, pids)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	l, err := netlab.New(ctx) // reaps the dead owner's lab
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d of the dead owner's pod still runs", pid)
		}
	}
	if list, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(list), ns) {
		t.Errorf("namespace %s is still there", ns)
	}
	if exec.Command("ip", "link", "show", bridge).Run() == nil {
		t.Errorf("bridge %s is still there", bridge)
	}
}

func nsPids(t *testing.T, ns string) []int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// alive reports whether pid runs (a zombie waiting for its reaper does
// not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

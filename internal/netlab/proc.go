package netlab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Proc is a process the lab started; its output goes to <Dir>/<name>.log.
// It runs in its own process group and is killed if the lab's owner dies.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	once    sync.Once
}

// ProcOptions say where and as whom a process runs.
type ProcOptions struct {
	// Pod is the namespace to run in; nil means the host namespace.
	Pod *Pod
	// UID and GID, if UID is not 0, drop privileges (the sidecar runs as
	// the proxy uid, whose traffic the iptables rules do not redirect).
	UID, GID int
	Env      []string
}

// Start runs bin with args as a lab process; Close stops it.
func (l *Lab) Start(name string, opts ProcOptions, bin string, args ...string) (*Proc, error) {
	p, err := StartProc(l.Dir, name, opts, bin, args...)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, nil
}

// StartProc runs bin with args, its output in <dir>/<name>.log; the caller
// stops it (Stop or Kill). No lab is needed for a process on the host
// without privileges to drop.
func StartProc(dir, name string, opts ProcOptions, bin string, args ...string) (*Proc, error) {
	argv := []string{bin}
	argv = append(argv, args...)
	if opts.UID != 0 {
		argv = append([]string{"setpriv", "--reuid", strconv.Itoa(opts.UID), "--regid", strconv.Itoa(opts.GID),
			"--clear-groups", "--pdeathsig", "SIGKILL", "--"}, argv...)
	}
	if opts.Pod != nil {
		argv = append([]string{"ip", "netns", "exec", opts.Pod.NetNS}, argv...)
	}
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("netlab: %s log: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), opts.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("netlab: start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM to the process group, SIGKILL after 5 s, and waits.
func (p *Proc) Stop() {
	p.once.Do(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	})
}

// Kill sends SIGKILL to the process group and waits (a crash, not a
// shutdown).
func (p *Proc) Kill() {
	p.once.Do(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	})
}

// Log returns the process's output so far.
func (p *Proc) Log() string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// LogTail returns the last n bytes of the output, from a line start.
func (p *Proc) LogTail(n int) string {
	b := []byte(p.Log())
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

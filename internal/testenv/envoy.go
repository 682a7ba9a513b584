package testenv

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Envoy is a running Envoy process started by StartEnvoy.
type Envoy struct {
	// AdminURL is http://127.0.0.1:<admin port>.
	AdminURL string
	// Dir is the directory holding the bootstrap and the log.
	Dir  string
	proc *process
}

// EnvoyOptions configure StartEnvoy.
type EnvoyOptions struct {
	// Bootstrap is the bootstrap YAML or JSON. The admin listener is added by
	// StartEnvoy unless the bootstrap has an "admin:" section of its own, in
	// which case AdminPort must name its port.
	Bootstrap string
	AdminPort int
	// Args are extra command-line arguments.
	Args []string
	// LogLevel defaults to "info".
	LogLevel string
}

var baseID atomic.Int64

// StartEnvoy runs the real Envoy with the bootstrap and waits until its admin
// API answers. It is stopped when the test ends; its log is printed if the
// test failed.
func StartEnvoy(t testing.TB, opts EnvoyOptions) *Envoy {
	t.Helper()
	bin := Need(t, "envoy")
	dir := t.TempDir()
	port := opts.AdminPort
	bootstrap := opts.Bootstrap
	if port == 0 {
		var err error
		if port, err = FreePort(); err != nil {
			t.Fatal(err)
		}
		bootstrap = fmt.Sprintf("admin:\n  address:\n    socket_address: {address: 127.0.0.1, port_value: %d}\n%s", port, bootstrap)
	}
	path := filepath.Join(dir, "bootstrap.yaml")
	if err := os.WriteFile(path, []byte(bootstrap), 0o600); err != nil {
		t.Fatal(err)
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	args := append([]string{"-c", path, "--base-id", strconv.FormatInt(int64(os.Getpid())%10000*100+baseID.Add(1), 10),
		"--concurrency", "1", "--log-level", opts.LogLevel, "--disable-hot-restart"}, opts.Args...)
	p, err := startProcess("envoy", dir, nil, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	e := &Envoy{AdminURL: "http://127.0.0.1:" + strconv.Itoa(port), Dir: dir, proc: p}
	t.Cleanup(func() {
		p.stop(5 * time.Second)
		if t.Failed() {
			t.Logf("envoy log tail:\n%s", p.logTail(8000))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.waitFor(ctx, "admin API", httpOK(e.AdminURL+"/server_info", nil)); err != nil {
		t.Fatal(err)
	}
	return e
}

// Admin GETs an admin API path (e.g. "/config_dump") and returns the body.
func (e *Envoy) Admin(ctx context.Context, path string) ([]byte, error) {
	return httpGet(ctx, http.DefaultClient, e.AdminURL+path)
}

// WaitReady waits until /ready answers LIVE.
func (e *Envoy) WaitReady(ctx context.Context) error {
	return e.proc.waitFor(ctx, "/ready", httpOK(e.AdminURL+"/ready", nil))
}

// Stat returns the value of one counter or gauge from /stats, or an error if
// Envoy does not have it.
func (e *Envoy) Stat(ctx context.Context, name string) (int64, error) {
	body, err := e.Admin(ctx, "/stats?filter=^"+strings.ReplaceAll(name, ".", "\\.")+"$")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok && k == name {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("envoy: stat %s not found", name)
}

// Log returns the tail of Envoy's log.
func (e *Envoy) Log() string { return e.proc.logTail(16000) }

// Stop stops Envoy (SIGTERM, then SIGKILL).
func (e *Envoy) Stop() { e.proc.stop(5 * time.Second) }

// Exited reports whether Envoy has ended.
func (e *Envoy) Exited() bool { return e.proc.exited() }

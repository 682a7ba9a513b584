// Package testenv starts the real parts meshd is tested against: etcd,
// kube-apiserver, kube-controller-manager, cert-manager and Envoy, all built or
// installed into the project's tool folder (.tools/, filled by `make tools`).
//
// Where it sits: test-only; nothing outside *_test.go files imports it.
//
// A test that needs a part that is not installed fails when CI=true and skips
// with a loud message otherwise (see Need).
package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// ToolsDirEnv overrides where the tool binaries are looked up (a directory
// holding envoy, etcd, kube-apiserver, ...). Default: <repo>/.tools/bin.
const ToolsDirEnv = "MESHD_TOOLS_BIN"

// InCI reports whether the tests run in CI, where a missing real part is a failure.
func InCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v != "" && v != "0" && v != "false"
}

// RepoRoot returns the directory holding meshd's go.mod, searching upwards from
// the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), "module github.com/meshd/meshd\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testenv: meshd's go.mod not found above the working directory")
		}
		dir = parent
	}
}

// ToolPath returns the path of an installed tool, or an error saying how to
// install it.
func ToolPath(name string) (string, error) {
	dir := os.Getenv(ToolsDirEnv)
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, ".tools", "bin")
	}
	p := filepath.Join(dir, name)
	st, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("testenv: %s not installed at %s (run `make tools`): %w", name, p, err)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("testenv: %s at %s is not an executable file", name, p)
	}
	return p, nil
}

// Need returns the path of a tool the test cannot run without. In CI a missing
// tool fails the test; elsewhere the test is skipped with a loud message.
func Need(t testing.TB, name string) string {
	t.Helper()
	p, err := ToolPath(name)
	if err != nil {
		Unavailable(t, err)
	}
	return p
}

// Unavailable ends a test whose real part could not be had: a failure in CI,
// a loud skip elsewhere.
func Unavailable(t testing.TB, err error) {
	t.Helper()
	if InCI() {
		t.Fatalf("real part unavailable in CI: %v", err)
	}
	t.Skipf("\n*** SKIPPED: real part unavailable: %v\n*** (this would FAIL in CI; run `make tools`)", err)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

package k8s

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const localMesh = `
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 198.19.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo, labels: {app: web}}
spec:
  serviceAccountName: web
  containers: [{name: app, image: nginx}]
status: {podIP: 198.18.0.10}
`

func TestLocalDirDrivesWatcherAndReloads(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(file, []byte(localMesh), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := NewLocalDir(dir, 20*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	states := make(chan *State, 16)
	w, err := New(Config{Source: l, HoldOff: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond,
		OnState: func(_ context.Context, s *State) { states <- s }})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = w.Start(ctx) }()

	waitState(ctx, t, states, func(s *State) bool { return s.Services.Len() == 1 && s.Pods.Len() == 1 && s.Namespaces.Len() == 1 })

	// A broken file is reported and changes nothing: once it has been
	// read (the directory loaded as it is now), the same pod is served.
	writeLater(t, file, localMesh+"\n---\nkind: [broken\n")
	now, err := dirStamp(dir)
	if err != nil {
		t.Fatal(err)
	}
	for l.loadedStamp() != now {
		select {
		case <-ctx.Done():
			t.Fatal("the broken file was never read")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if pods := l.State().Pods; pods.Len() != 1 {
		t.Fatalf("a broken file changed the served state: %d pods", pods.Len())
	}
	// Remove the pod, add a service: the watcher sees exactly that.
	changed := strings.Replace(localMesh, "kind: Pod", "kind: Service", 1)
	changed = strings.Replace(changed, "name: web-0", "name: db", 1)
	changed = strings.Replace(changed, "  serviceAccountName: web\n  containers: [{name: app, image: nginx}]\nstatus: {podIP: 198.18.0.10}\n", "  ports: [{name: tcp, port: 5432}]\n", 1)
	writeLater(t, file, changed)
	waitState(ctx, t, states, func(s *State) bool { return s.Services.Len() == 2 && s.Pods.Len() == 0 })
}

func TestLocalDirRejectsBadInput(t *testing.T) {
	tests := map[string]string{
		"not yaml":     "kind: [broken",
		"unknown kind": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
		"duplicate":    "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n",
	}
	for name, content := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "x.yaml"), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := NewLocalDir(dir, time.Second, nil); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

func waitState(ctx context.Context, t *testing.T, states <-chan *State, ok func(*State) bool) {
	t.Helper()
	for {
		select {
		case s := <-states:
			if ok(s) {
				return
			}
		case <-ctx.Done():
			t.Fatal("expected state never arrived")
		}
	}
}

// writeLater rewrites a file with a later modification time.
func writeLater(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Second)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
}

// TestLocalDirSurvivesBadAndBigChanges: one change adding 300 Services and
// 300 EndpointSlices is served (it used to overflow the in-memory watch and
// panic); a file that is not YAML keeps its previous objects while another
// file's change goes through; objects with names the apiserver would refuse
// are left out, each alone.
func TestLocalDirSurvivesBadAndBigChanges(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(localMesh), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := NewLocalDir(dir, 20*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	states := make(chan *State, 64)
	w, err := New(Config{Source: l, HoldOff: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond,
		OnState: func(_ context.Context, s *State) {
			select {
			case states <- s:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = w.Start(ctx) }()
	waitState(ctx, t, states, func(s *State) bool { return s.Services.Len() == 1 })

	var big strings.Builder
	for i := range 300 {
		fmt.Fprintf(&big, "---\napiVersion: v1\nkind: Service\nmetadata: {name: s%d, namespace: demo}\nspec: {clusterIP: 198.19.%d.%d, ports: [{name: http, port: 80}]}\n", i, 100+i/200, 1+i%200)
		fmt.Fprintf(&big, "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s%d-1, namespace: demo, labels: {kubernetes.io/service-name: s%d}}\naddressType: IPv4\nendpoints: [{addresses: [198.18.%d.%d]}]\nports: [{name: http, port: 80}]\n", i, i, 100+i/200, 1+i%200)
	}
	writeLater(t, filepath.Join(dir, "b.yaml"), big.String())
	waitState(ctx, t, states, func(s *State) bool {
		return s.Services.Len() == 301 && s.Slices.Len() == 300
	})

	// a.yaml turns to garbage (its objects stay) while c.yaml adds a
	// namespace, and d.yaml has one good and three bad names.
	writeLater(t, filepath.Join(dir, "a.yaml"), "\x00\x01 this is: [not yaml\n\t- at all")
	writeLater(t, filepath.Join(dir, "c.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: extra}\n")
	writeLater(t, filepath.Join(dir, "d.yaml"), `apiVersion: v1
kind: Pod
metadata: {name: "a.b", namespace: demo}
spec: {serviceAccountName: "x/../../y", containers: [{name: app, image: x}]}
---
apiVersion: v1
kind: Service
metadata: {name: "Ünicode", namespace: demo}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: "", namespace: demo}
spec: {containers: [{name: app, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: good-0, namespace: demo}
spec: {containers: [{name: app, image: x}]}
`)
	waitState(ctx, t, states, func(s *State) bool {
		names := map[string]bool{}
		for p := range s.Pods.Values() {
			names[p.Name] = true
		}
		return s.Namespaces.Len() == 2 && names["web-0"] && names["good-0"] && s.Pods.Len() == 2 && s.Services.Len() == 301
	})
}

// Policies in a local dir reach the Watcher, and go away with their file.
func TestLocalDirServesPolicies(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(localMesh), 0o644); err != nil {
		t.Fatal(err)
	}
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("apiVersion: meshd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: demo}\n"+
		"spec: {selector: {}, action: DENY, rules: [{}]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := NewLocalDir(dir, 20*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	states := make(chan *State, 16)
	w, err := New(Config{Source: l, HoldOff: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond,
		OnState: func(_ context.Context, s *State) { states <- s }})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = w.Start(ctx) }()
	var got *State
	waitState(ctx, t, states, func(s *State) bool {
		got = s
		return len(s.Policies) == 1 && s.Policies[0].GetName() == "p" && s.Pods.Len() == 1
	})
	snap, problems := Convert(got, "cluster.local")
	if w := snap.Workload("web-0.demo"); w == nil || len(w.Policies) != 1 || len(problems) > 0 {
		t.Fatalf("web-0 not under policy p: %+v, problems %v", w, problems)
	}
	if err := os.Remove(policy); err != nil {
		t.Fatal(err)
	}
	waitState(ctx, t, states, func(s *State) bool { return len(s.Policies) == 0 && s.Pods.Len() == 1 })
}

package k8s

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/testing"
)

// LocalDir serves a directory of Kubernetes YAML (Services, EndpointSlices,
// Pods, Namespaces) as an in-memory API, so `meshd serve --local-dir` drives
// the very same informer path as a cluster. Poll reloads it on change; a file
// that does not parse is reported and the previous state is kept.
type LocalDir struct {
	dir    string
	client *fake.Clientset
	log    *slog.Logger
	stamp  string
}

// NewLocalDir loads dir; an error in it is returned (nothing is served
// half-loaded).
func NewLocalDir(dir string, log *slog.Logger) (*LocalDir, error) {
	if log == nil {
		log = slog.Default()
	}
	l := &LocalDir{dir: dir, client: fake.NewClientset(), log: log}
	if err := l.reload(); err != nil {
		return nil, err
	}
	return l, nil
}

// Client is the in-memory API to give to the Watcher.
func (l *LocalDir) Client() *fake.Clientset { return l.client }

// Poll reloads the directory whenever a file changes, until ctx ends.
func (l *LocalDir) Poll(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if stamp, err := dirStamp(l.dir); err == nil && stamp == l.stamp {
			continue
		}
		if err := l.reload(); err != nil {
			l.log.Error("k8s: local dir not reloaded; keeping the previous state", "dir", l.dir, "error", err)
		}
	}
}

var localKinds = map[schema.GroupVersionKind]schema.GroupVersionResource{
	corev1.SchemeGroupVersion.WithKind("Service"):            corev1.SchemeGroupVersion.WithResource("services"),
	corev1.SchemeGroupVersion.WithKind("Pod"):                corev1.SchemeGroupVersion.WithResource("pods"),
	corev1.SchemeGroupVersion.WithKind("Namespace"):          corev1.SchemeGroupVersion.WithResource("namespaces"),
	discoveryv1.SchemeGroupVersion.WithKind("EndpointSlice"): discoveryv1.SchemeGroupVersion.WithResource("endpointslices"),
}

// reload parses every file, then makes the in-memory API hold exactly that.
func (l *LocalDir) reload() error {
	stamp, err := dirStamp(l.dir)
	if err != nil {
		return err
	}
	want, err := loadDir(l.dir)
	if err != nil {
		return err
	}
	tracker := l.client.Tracker()
	for key, obj := range want {
		gvr := localKinds[obj.GetObjectKind().GroupVersionKind()]
		m, _ := meta.Accessor(obj)
		if _, err := tracker.Get(gvr, m.GetNamespace(), m.GetName()); err == nil {
			err = tracker.Update(gvr, obj, m.GetNamespace())
			if err != nil {
				return fmt.Errorf("k8s: local %s: %w", key, err)
			}
			continue
		}
		if err := tracker.Add(obj); err != nil {
			return fmt.Errorf("k8s: local %s: %w", key, err)
		}
	}
	l.deleteMissing(tracker, want)
	l.stamp = stamp
	l.log.Info("k8s: local dir loaded", "dir", l.dir, "objects", len(want))
	return nil
}

func (l *LocalDir) deleteMissing(tracker testing.ObjectTracker, want map[string]runtime.Object) {
	for gvk, gvr := range localKinds {
		list, err := tracker.List(gvr, gvk, "")
		if err != nil {
			continue
		}
		items, _ := meta.ExtractList(list)
		for _, item := range items {
			m, _ := meta.Accessor(item)
			if _, ok := want[objectKey(gvk.Kind, m.GetNamespace(), m.GetName())]; !ok {
				_ = tracker.Delete(gvr, m.GetNamespace(), m.GetName())
			}
		}
	}
}

// loadDir decodes every *.yaml / *.yml / *.json file of dir.
func loadDir(dir string) (map[string]runtime.Object, error) {
	files, err := yamlFiles(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]runtime.Object{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("k8s: local %s: %w", f, err)
		}
		if err := decodeInto(out, data); err != nil {
			return nil, fmt.Errorf("k8s: local %s: %w", f, err)
		}
	}
	return out, nil
}

func decodeInto(out map[string]runtime.Object, data []byte) error {
	reader := utilyaml.NewYAMLReader(bufioReader(data))
	for i := 1; ; i++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, gvk, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			return fmt.Errorf("document %d: %w", i, err)
		}
		if _, ok := localKinds[*gvk]; !ok {
			return fmt.Errorf("document %d: kind %s is not served from a local dir (want Service, EndpointSlice, Pod, Namespace)", i, gvk)
		}
		m, _ := meta.Accessor(obj)
		if gvk.Kind != "Namespace" && m.GetNamespace() == "" {
			m.SetNamespace("default")
		}
		key := objectKey(gvk.Kind, m.GetNamespace(), m.GetName())
		if _, dup := out[key]; dup {
			return fmt.Errorf("document %d: %s defined twice", i, key)
		}
		out[key] = obj
	}
}

func objectKey(kind, ns, name string) string { return kind + " " + ns + "/" + name }

func yamlFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("k8s: local dir: %w", err)
	}
	var files []string
	for _, e := range entries {
		n := e.Name()
		if !e.IsDir() && !strings.HasPrefix(n, ".") && (strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml") || strings.HasSuffix(n, ".json")) {
			files = append(files, filepath.Join(dir, n))
		}
	}
	sort.Strings(files)
	return files, nil
}

// dirStamp changes when any file of the directory changes.
func dirStamp(dir string) (string, error) {
	files, err := yamlFiles(dir)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s %d %d\n", f, st.Size(), st.ModTime().UnixNano())
	}
	return b.String(), nil
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }

// StateFromYAML decodes Kubernetes YAML documents (Services, EndpointSlices,
// Pods, Namespaces) into a State, as a local dir would serve them. For tests
// and offline tools.
func StateFromYAML(data []byte) (*State, error) {
	objs := map[string]runtime.Object{}
	if err := decodeInto(objs, data); err != nil {
		return nil, fmt.Errorf("k8s: %w", err)
	}
	st := &State{}
	keys := slices.Sorted(maps.Keys(objs))
	for _, k := range keys {
		switch o := objs[k].(type) {
		case *corev1.Service:
			st.Services = append(st.Services, o)
		case *discoveryv1.EndpointSlice:
			st.Slices = append(st.Slices, o)
		case *corev1.Pod:
			st.Pods = append(st.Pods, o)
		case *corev1.Namespace:
			st.Namespaces = append(st.Namespaces, o)
		}
	}
	return st, nil
}

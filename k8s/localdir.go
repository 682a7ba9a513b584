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
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apimachinery/pkg/watch"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	clienttesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"
)

// LocalDir serves a directory of Kubernetes YAML (Services, EndpointSlices,
// Pods, Namespaces) as an in-memory API, so `meshd serve --local-dir` drives
// the very same informer path as a cluster. Poll reloads it on change.
//
// Bad input is skipped alone and reported once: a document that does not
// decode, is of another kind, repeats an object or names it as the
// apiserver would refuse is left out, and a file with such a problem
// deletes nothing it served before (its other documents still apply). Only objects that changed are
// written, paced so that the in-memory API's watch buffers never overflow.
type LocalDir struct {
	dir     string
	client  *fake.Clientset
	dynamic *dynamicfake.FakeDynamicClient
	log     *slog.Logger
	stamp   string
	// files are each file's objects at its last good load; written are the
	// objects as last written to the in-memory API; reported are the
	// problems already logged (each once).
	files    map[string]map[string]runtime.Object
	written  map[string]runtime.Object
	reported map[string]bool
}

// writesPerPause bounds the writes between two pauses of a reload; with
// the watch buffer below, informers drain them long before it fills.
const (
	writesPerPause = 500
	writePause     = 20 * time.Millisecond
	watchBuffer    = 4096
)

// NewLocalDir loads dir; an error in it is returned (nothing is served
// half-loaded at start).
func NewLocalDir(dir string, log *slog.Logger) (*LocalDir, error) {
	if log == nil {
		log = slog.Default()
	}
	// The in-memory API's watches buffer DefaultChanSize events and panic
	// beyond; a directory change may well be larger than the default 100.
	if watch.DefaultChanSize < watchBuffer {
		watch.DefaultChanSize = watchBuffer
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{PolicyResource: PolicyKind + "List"})
	l := &LocalDir{dir: dir, client: fake.NewClientset(), dynamic: dyn, log: log, files: map[string]map[string]runtime.Object{},
		written: map[string]runtime.Object{}, reported: map[string]bool{}}
	problems, err := l.reload()
	if err != nil {
		return nil, err
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("k8s: local dir %s: %w", dir, errors.Join(problems...))
	}
	return l, nil
}

// Client is the in-memory API to give to the Watcher.
func (l *LocalDir) Client() *fake.Clientset { return l.client }

// Dynamic is the in-memory API of the AuthorizationPolicies, for the
// Watcher.
func (l *LocalDir) Dynamic() *dynamicfake.FakeDynamicClient { return l.dynamic }

// tracker is where objects of the kind are kept.
func (l *LocalDir) tracker(gvk schema.GroupVersionKind) clienttesting.ObjectTracker {
	if gvk == policyGVK {
		return l.dynamic.Tracker()
	}
	return l.client.Tracker()
}

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
		problems, err := l.reload()
		if err != nil {
			l.log.Error("k8s: local dir not reloaded; keeping the previous state", "dir", l.dir, "error", err)
		}
		for _, p := range problems {
			if !l.reported[p.Error()] {
				l.reported[p.Error()] = true
				l.log.Error("k8s: local dir: skipped", "dir", l.dir, "problem", p)
			}
		}
	}
}

var localKinds = map[schema.GroupVersionKind]schema.GroupVersionResource{
	corev1.SchemeGroupVersion.WithKind("Service"):            corev1.SchemeGroupVersion.WithResource("services"),
	corev1.SchemeGroupVersion.WithKind("Pod"):                corev1.SchemeGroupVersion.WithResource("pods"),
	corev1.SchemeGroupVersion.WithKind("Namespace"):          corev1.SchemeGroupVersion.WithResource("namespaces"),
	discoveryv1.SchemeGroupVersion.WithKind("EndpointSlice"): discoveryv1.SchemeGroupVersion.WithResource("endpointslices"),
	policyGVK: PolicyResource,
}

// reload parses every file, then makes the in-memory API hold exactly that.
// reload reads every file; it returns the problems of the bad ones (each
// skipped alone) and an error only when the directory cannot be read.
func (l *LocalDir) reload() ([]error, error) {
	stamp, err := dirStamp(l.dir)
	if err != nil {
		return nil, err
	}
	files, err := yamlFiles(l.dir)
	if err != nil {
		return nil, err
	}
	var problems []error
	want := map[string]runtime.Object{}
	seen := map[string]bool{}
	for _, f := range files {
		seen[f] = true
		objs, errs := loadFile(f)
		problems = append(problems, errs...)
		if len(errs) > 0 {
			// A file with a problem deletes nothing: what it had and no
			// longer has in a good document stays as it was.
			for key, obj := range l.files[f] {
				if _, ok := objs[key]; !ok {
					objs[key] = obj
				}
			}
		}
		l.files[f] = objs
		for key, obj := range objs {
			if _, dup := want[key]; dup {
				problems = append(problems, fmt.Errorf("%s: %s is defined in another file too; the first one is kept", f, key))
				continue
			}
			want[key] = obj
		}
	}
	for f := range l.files {
		if !seen[f] {
			delete(l.files, f)
		}
	}
	if err := l.apply(want); err != nil {
		return problems, err
	}
	l.stamp = stamp
	l.log.Info("k8s: local dir loaded", "dir", l.dir, "objects", len(want), "skipped", len(problems))
	return problems, nil
}

// apply writes what changed since the last load, pausing every
// writesPerPause writes, and deletes what is gone.
func (l *LocalDir) apply(want map[string]runtime.Object) error {
	writes := 0
	pace := func() {
		if writes++; writes%writesPerPause == 0 {
			time.Sleep(writePause)
		}
	}
	for _, key := range slices.Sorted(maps.Keys(want)) {
		obj := want[key]
		if prev, ok := l.written[key]; ok && equality.Semantic.DeepEqual(prev, obj) {
			continue
		}
		gvk := obj.GetObjectKind().GroupVersionKind()
		gvr, tracker := localKinds[gvk], l.tracker(gvk)
		m, _ := meta.Accessor(obj)
		var err error
		if _, getErr := tracker.Get(gvr, m.GetNamespace(), m.GetName()); getErr == nil {
			err = tracker.Update(gvr, obj.DeepCopyObject(), m.GetNamespace())
		} else {
			err = tracker.Add(obj.DeepCopyObject())
		}
		if err != nil {
			return fmt.Errorf("k8s: local %s: %w", key, err)
		}
		l.written[key] = obj
		pace()
	}
	for key, obj := range l.written {
		if _, ok := want[key]; ok {
			continue
		}
		gvk := obj.GetObjectKind().GroupVersionKind()
		gvr, tracker := localKinds[gvk], l.tracker(gvk)
		m, _ := meta.Accessor(obj)
		_ = tracker.Delete(gvr, m.GetNamespace(), m.GetName())
		delete(l.written, key)
		pace()
	}
	return nil
}

// loadFile decodes one file's good documents; the bad ones are returned as
// problems.
func loadFile(f string) (map[string]runtime.Object, []error) {
	objs := map[string]runtime.Object{}
	data, err := os.ReadFile(f)
	if err != nil {
		return objs, []error{fmt.Errorf("%s: %w", f, err)}
	}
	problems := decodeDocs(objs, data)
	for i, p := range problems {
		problems[i] = fmt.Errorf("%s: %w", f, p)
	}
	return objs, problems
}

// decodeDocs decodes YAML documents into out, skipping the bad ones (their
// problems returned); a stream that cannot be split ends there.
func decodeDocs(out map[string]runtime.Object, data []byte) (problems []error) {
	reader := utilyaml.NewYAMLReader(bufioReader(data))
	for i := 1; ; i++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return problems
		}
		if err != nil {
			return append(problems, fmt.Errorf("document %d: %w", i, err))
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		key, obj, err := decodeDoc(doc)
		if err == nil {
			if _, dup := out[key]; dup {
				err = fmt.Errorf("%s defined twice", key)
			}
		}
		if err != nil {
			problems = append(problems, fmt.Errorf("document %d: %w", i, err))
			continue
		}
		out[key] = obj
	}
}

// decodeDoc decodes one document of a served kind, with the names the
// apiserver would accept.
func decodeDoc(doc []byte) (string, runtime.Object, error) {
	obj, gvk, err := decodeObject(doc)
	if err != nil {
		return "", nil, err
	}
	if _, ok := localKinds[*gvk]; !ok {
		return "", nil, fmt.Errorf("kind %s is not served from a local dir (want Service, EndpointSlice, Pod, Namespace, AuthorizationPolicy)", gvk)
	}
	m, _ := meta.Accessor(obj)
	if gvk.Kind != "Namespace" && m.GetNamespace() == "" {
		m.SetNamespace("default")
	}
	key := objectKey(gvk.Kind, m.GetNamespace(), m.GetName())
	if err := validNames(gvk.Kind, obj); err != nil {
		return "", nil, fmt.Errorf("%s: %w", key, err)
	}
	return key, obj, nil
}

// decodeObject decodes a built-in kind, or an AuthorizationPolicy as an
// unstructured object.
func decodeObject(doc []byte) (runtime.Object, *schema.GroupVersionKind, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err == nil && tm.GroupVersionKind() == policyGVK {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			return nil, nil, err
		}
		return u, &policyGVK, nil
	}
	return scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
}

// validNames checks names as the apiserver does: namespaces and services
// are DNS labels, pods and EndpointSlices DNS subdomains, and so is a pod's
// service account.
func validNames(kind string, obj runtime.Object) error {
	m, _ := meta.Accessor(obj)
	check := func(what, v string, f func(string) []string) error {
		if msgs := f(v); len(msgs) > 0 {
			return fmt.Errorf("%s %q is not valid: %s", what, v, strings.Join(msgs, "; "))
		}
		return nil
	}
	var errs []error
	if kind != "Namespace" {
		errs = append(errs, check("namespace", m.GetNamespace(), validation.IsDNS1123Label))
	}
	switch kind {
	case "Namespace":
		errs = append(errs, check("name", m.GetName(), validation.IsDNS1123Label))
	case "Service":
		errs = append(errs, check("name", m.GetName(), validation.IsDNS1035Label))
	default:
		errs = append(errs, check("name", m.GetName(), validation.IsDNS1123Subdomain))
	}
	if p, ok := obj.(*corev1.Pod); ok && p.Spec.ServiceAccountName != "" {
		errs = append(errs, check("serviceAccountName", p.Spec.ServiceAccountName, validation.IsDNS1123Subdomain))
	}
	return errors.Join(errs...)
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
	if problems := decodeDocs(objs, data); len(problems) > 0 {
		return nil, fmt.Errorf("k8s: %w", errors.Join(problems...))
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
		case *unstructured.Unstructured:
			st.Policies = append(st.Policies, o)
		}
	}
	return st, nil
}

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
	"sync"
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
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/meshd/meshd/internal/vec"
)

// LocalDir serves a directory of Kubernetes YAML (Services, EndpointSlices,
// Pods, Namespaces, AuthorizationPolicies) as the Watcher's Source, so
// `meshd serve --local-dir` drives the same batching, conversion and
// publication as a cluster, without an API in between. Watch reloads it on
// change.
//
// Bad input is skipped alone and reported once: a document that does not
// decode, is of another kind, repeats an object or names it as the
// apiserver would refuse is left out, and a file with such a problem
// deletes nothing it served before (its other documents still apply).
type LocalDir struct {
	dir   string
	every time.Duration
	log   *slog.Logger
	// files are each file's objects at its last good load; reported are
	// the problems already logged (each once).
	files    map[string]map[string]runtime.Object
	reported map[string]bool

	mu    sync.Mutex
	stamp string
	// served are the objects served, by key; replaced whole by a reload
	// that changed something, never mutated. stamp (written by reload
	// under mu) is the directory's stamp they were read at.
	served map[string]runtime.Object
}

var _ Source = (*LocalDir)(nil)

// NewLocalDir loads dir, to be reloaded every poll once watched; an error
// in it is returned (nothing is served half-loaded at start).
func NewLocalDir(dir string, every time.Duration, log *slog.Logger) (*LocalDir, error) {
	if log == nil {
		log = slog.Default()
	}
	l := &LocalDir{dir: dir, every: every, log: log, files: map[string]map[string]runtime.Object{},
		reported: map[string]bool{}, served: map[string]runtime.Object{}}
	_, problems, err := l.reload()
	if err != nil {
		return nil, err
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("k8s: local dir %s: %w", dir, errors.Join(problems...))
	}
	return l, nil
}

// State implements Source: the objects served now.
func (l *LocalDir) State() *State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return stateOf(l.served)
}

// Watch implements Source: it reloads the directory whenever a file
// changes and calls changed when what is served did, until ctx ends.
func (l *LocalDir) Watch(ctx context.Context, changed func()) error {
	t := time.NewTicker(l.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if stamp, err := dirStamp(l.dir); err == nil && stamp == l.loadedStamp() {
			continue
		}
		diff, problems, err := l.reload()
		if err != nil {
			l.log.Error("k8s: local dir not reloaded; keeping the previous state", "dir", l.dir, "error", err)
		}
		for _, p := range problems {
			if !l.reported[p.Error()] {
				l.reported[p.Error()] = true
				l.log.Error("k8s: local dir: skipped", "dir", l.dir, "problem", p)
			}
		}
		if diff {
			changed()
		}
	}
}

// loadedStamp is the directory's stamp at the last load.
func (l *LocalDir) loadedStamp() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stamp
}

var localKinds = map[schema.GroupVersionKind]bool{
	corev1.SchemeGroupVersion.WithKind("Service"):            true,
	corev1.SchemeGroupVersion.WithKind("Pod"):                true,
	corev1.SchemeGroupVersion.WithKind("Namespace"):          true,
	discoveryv1.SchemeGroupVersion.WithKind("EndpointSlice"): true,
	policyGVK: true,
}

// reload reads every file and serves what they hold; it reports whether
// that changed what is served, the problems of the bad files (each skipped
// alone), and an error only when the directory cannot be read.
func (l *LocalDir) reload() (bool, []error, error) {
	stamp, err := dirStamp(l.dir)
	if err != nil {
		return false, nil, err
	}
	files, err := yamlFiles(l.dir)
	if err != nil {
		return false, nil, err
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
	l.mu.Lock()
	diff := !maps.EqualFunc(l.served, want, func(a, b runtime.Object) bool { return equality.Semantic.DeepEqual(a, b) })
	if diff {
		l.served = want
	}
	l.stamp = stamp
	l.mu.Unlock()
	l.log.Info("k8s: local dir loaded", "dir", l.dir, "objects", len(want), "skipped", len(problems))
	return diff, problems, nil
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
	if !localKinds[*gvk] {
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
// are DNS labels, pods, EndpointSlices and policies DNS subdomains, and so
// is a pod's service account. The local dir refuses a document so named;
// the conversion leaves such an object out with a Problem, whatever its
// Source: the mesh's keys ("<name>.<namespace>"), resource names and SPIFFE
// IDs are made of names, and Envoy takes only valid UTF-8.
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
// Pods, Namespaces, AuthorizationPolicies) into a State, as a local dir
// would serve them. For tests and offline tools.
func StateFromYAML(data []byte) (*State, error) {
	objs := map[string]runtime.Object{}
	if problems := decodeDocs(objs, data); len(problems) > 0 {
		return nil, fmt.Errorf("k8s: %w", errors.Join(problems...))
	}
	return stateOf(objs), nil
}

// stateOf sorts objects by kind into a State, in key order (policies in
// namespace, name order, as the Watcher lists them from an apiserver).
func stateOf(objs map[string]runtime.Object) *State {
	var (
		services   []*corev1.Service
		eps        []*discoveryv1.EndpointSlice
		pods       []*corev1.Pod
		namespaces []*corev1.Namespace
		policies   []*unstructured.Unstructured
	)
	for _, k := range slices.Sorted(maps.Keys(objs)) {
		switch o := objs[k].(type) {
		case *corev1.Service:
			services = append(services, o)
		case *discoveryv1.EndpointSlice:
			eps = append(eps, o)
		case *corev1.Pod:
			pods = append(pods, o)
		case *corev1.Namespace:
			namespaces = append(namespaces, o)
		case *unstructured.Unstructured:
			policies = append(policies, o)
		}
	}
	sortPolicies(policies)
	return &State{Services: vec.Of(services), Slices: vec.Of(eps), Pods: vec.Of(pods), Namespaces: vec.Of(namespaces), Policies: policies}
}

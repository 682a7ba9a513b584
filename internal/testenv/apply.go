package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
)

// ApplyOptions tune ApplyYAML.
type ApplyOptions struct {
	// DryRun asks the apiserver to validate and admit without persisting.
	DryRun bool
	// Namespace is used for namespaced objects that name none.
	Namespace string
}

// ApplyFiles server-side applies every YAML document of the files.
func (e *Env) ApplyFiles(ctx context.Context, files ...string) error {
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := e.ApplyYAML(ctx, b, ApplyOptions{}); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
	}
	return nil
}

// ApplyYAML server-side applies a multi-document YAML stream, as
// `kubectl apply --server-side --force-conflicts` would.
func (e *Env) ApplyYAML(ctx context.Context, data []byte, opts ApplyOptions) error {
	dc, err := discovery.NewDiscoveryClientForConfig(e.Config)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn, err := dynamic.NewForConfig(e.Config)
	if err != nil {
		return err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("testenv: decode: %w", err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		if err := applyOne(ctx, dyn, mapper, &obj, opts); err != nil {
			return err
		}
		if obj.GetKind() == "CustomResourceDefinition" {
			mapper.Reset()
		}
	}
}

func applyOne(ctx context.Context, dyn dynamic.Interface, mapper *restmapper.DeferredDiscoveryRESTMapper, obj *unstructured.Unstructured, opts ApplyOptions) error {
	gvk := obj.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		mapper.Reset()
		if m, err = mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
			return fmt.Errorf("testenv: %s %s: %w", gvk, obj.GetName(), err)
		}
	}
	body, err := obj.MarshalJSON()
	if err != nil {
		return err
	}
	var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
	if m.Scope.Name() == "namespace" {
		ns := obj.GetNamespace()
		if ns == "" {
			ns = opts.Namespace
		}
		ri = dyn.Resource(m.Resource).Namespace(ns)
	}
	po := metav1.PatchOptions{FieldManager: "meshd-testenv", Force: ptrTo(true)}
	if opts.DryRun {
		po.DryRun = []string{metav1.DryRunAll}
	}
	if _, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, body, po); err != nil {
		return fmt.Errorf("testenv: apply %s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
	}
	return nil
}

func ptrTo[T any](v T) *T { return &v }

// FreshNamespace makes sure the namespace exists and holds no object: what
// an earlier test (or an earlier run of the same test, `go test -count=2`)
// left there is deleted at once, whatever its kind, so that a test starts
// from the same state in any order. Without the namespace controller a
// deleted namespace keeps its objects, hence this.
func (e *Env) FreshNamespace(ctx context.Context, name string) error {
	if err := e.EnsureNamespace(ctx, name); err != nil {
		return err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(e.Config)
	if err != nil {
		return err
	}
	lists, err := dc.ServerPreferredNamespacedResources()
	if err != nil && len(lists) == 0 {
		return fmt.Errorf("testenv: discovery: %w", err)
	}
	dyn, err := dynamic.NewForConfig(e.Config)
	if err != nil {
		return err
	}
	now := int64(0)
	for _, list := range lists {
		gv, err := schema.ParseGroupVersion(list.GroupVersion)
		if err != nil {
			return err
		}
		for _, r := range list.APIResources {
			if !slices.Contains(r.Verbs, "deletecollection") || !slices.Contains(r.Verbs, "list") {
				continue
			}
			if r.Name == "events" {
				continue // the record of what happened, kept; nothing reads them back as state
			}
			err := dyn.Resource(gv.WithResource(r.Name)).Namespace(name).DeleteCollection(ctx,
				metav1.DeleteOptions{GracePeriodSeconds: &now}, metav1.ListOptions{})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsMethodNotSupported(err) {
				return fmt.Errorf("testenv: empty namespace %s of %s: %w", name, r.Name, err)
			}
		}
	}
	return nil
}

package k8s

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/meshd/meshd/internal/vec"
)

// State is the Kubernetes state the mesh is built from. The objects are the
// informers' cached copies, and a kind with no event since the last state
// is the last state's list itself, one with a few events the last state's
// list patched in a few chunks (see vec): readers must not mutate the
// objects (the lists are immutable).
type State struct {
	Services   vec.Vec[*corev1.Service]
	Slices     vec.Vec[*discoveryv1.EndpointSlice]
	Pods       vec.Vec[*corev1.Pod]
	Namespaces vec.Vec[*corev1.Namespace]
	// Policies are the AuthorizationPolicies (see PolicyFromObject).
	Policies []*unstructured.Unstructured
	// ChangedAt is when the first change of the batch that produced this
	// state was noticed.
	ChangedAt time.Time
}

// Source is where a Watcher reads the objects when no apiserver serves
// them (a local dir): it holds them itself and says when they change.
type Source interface {
	// State returns the objects now (a new State; the objects in it must
	// not be mutated).
	State() *State
	// Watch calls changed after every change of State, until ctx ends.
	Watch(ctx context.Context, changed func()) error
}

// Config configures a Watcher.
type Config struct {
	// Client is the apiserver the informers watch; Source replaces it
	// (and Dynamic) without a cluster. One of them is required.
	Client kubernetes.Interface
	Source Source
	// Dynamic, when set, is where AuthorizationPolicies are watched (nil:
	// no policy applies).
	Dynamic dynamic.Interface
	// PoliciesServed reports whether the policies' API is served (their
	// CRD installed); nil: always. When it is not at start, policies are
	// watched from when it is (checked every PolicyRecheck, default 10s):
	// no policy can exist before its CRD, so nothing is allowed that
	// should not be.
	PoliciesServed func() (bool, error)
	PolicyRecheck  time.Duration
	// OnState receives the full current state after every batch of changes
	// (and once after the initial sync). Called from one goroutine.
	OnState func(context.Context, *State)
	// HoldOff and MaxDelay batch changes that follow each other (defaults
	// 100ms and 1s; see Batcher.Run).
	HoldOff, MaxDelay time.Duration
	// Resync is the informers' resync period (default 0: none).
	Resync time.Duration
	Logger *slog.Logger
	Clock  clock.WithTicker
}

// Watcher runs the informers. Start it with Start; Synced reports whether
// the initial lists have arrived.
type Watcher struct {
	cfg     Config
	synced  atomic.Bool
	batcher *Batcher
}

// New returns a Watcher.
func New(cfg Config) (*Watcher, error) {
	if (cfg.Client == nil) == (cfg.Source == nil) || cfg.OnState == nil {
		return nil, errors.New("k8s: OnState and one of Client or Source are required")
	}
	if cfg.HoldOff == 0 {
		cfg.HoldOff = 100 * time.Millisecond
	}
	if cfg.MaxDelay == 0 {
		cfg.MaxDelay = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PolicyRecheck == 0 {
		cfg.PolicyRecheck = 10 * time.Second
	}
	return &Watcher{cfg: cfg, batcher: NewBatcher(cfg.HoldOff, cfg.MaxDelay, cfg.Clock)}, nil
}

// Synced reports whether the informers have synced.
func (w *Watcher) Synced() bool { return w.synced.Load() }

// Start runs the informers (or watches the Source) until ctx ends. It
// hands on nothing before they have synced.
func (w *Watcher) Start(ctx context.Context) error {
	if w.cfg.Source != nil {
		return w.startSource(ctx)
	}
	factory := informers.NewSharedInformerFactory(w.cfg.Client, w.cfg.Resync)
	svc := factory.Core().V1().Services()
	slices := factory.Discovery().V1().EndpointSlices()
	pods := factory.Core().V1().Pods()
	nss := factory.Core().V1().Namespaces()
	handler := policyNotifier(w.batcher.Notify)
	var (
		svcList   kept[*corev1.Service]
		sliceList kept[*discoveryv1.EndpointSlice]
		podList   kept[*corev1.Pod]
		nsList    kept[*corev1.Namespace]
	)
	var delivered []cache.InformerSynced
	for _, inf := range []struct {
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}{{svc.Informer(), svcList.handler(w.batcher.Notify)}, {slices.Informer(), sliceList.handler(w.batcher.Notify)},
		{pods.Informer(), podList.handler(w.batcher.Notify)}, {nss.Informer(), nsList.handler(w.batcher.Notify)}} {
		if err := inf.informer.SetTransform(stripManagedFields); err != nil {
			return fmt.Errorf("k8s: informer transform: %w", err)
		}
		reg, err := inf.informer.AddEventHandler(inf.handler)
		if err != nil {
			return fmt.Errorf("k8s: informer handler: %w", err)
		}
		delivered = append(delivered, reg.HasSynced)
	}
	var policies atomic.Pointer[cache.GenericLister]
	if w.cfg.Dynamic != nil {
		served, err := w.policiesServed()
		for err != nil { // not knowing is not "not installed": wait
			w.cfg.Logger.Warn("k8s: cannot tell whether the AuthorizationPolicy CRD is installed; retrying", "error", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			served, err = w.policiesServed()
		}
		switch {
		case served:
			if err := w.watchPolicies(ctx, handler, &policies); err != nil || ctx.Err() != nil {
				return err
			}
		default:
			w.cfg.Logger.Warn("k8s: the AuthorizationPolicy CRD (meshd.io/v1alpha1) is not installed: no authorization policy applies until it is (deploy/base installs it)")
			go w.awaitPolicies(ctx, handler, &policies)
		}
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("k8s: %v informer did not sync", typ)
		}
	}
	// The lists are the events' (see kept): the initial ones are complete
	// once every object listed at the start has reached the handlers.
	if !cache.WaitForCacheSync(ctx.Done(), delivered...) {
		return nil // ctx ended
	}
	w.synced.Store(true)
	w.cfg.Logger.Info("k8s: informers synced")
	list := func(ctx context.Context, first time.Time) {
		st := &State{ChangedAt: first, Services: svcList.get(), Slices: sliceList.get(), Pods: podList.get(), Namespaces: nsList.get()}
		var err error
		if st.Policies, err = listPolicies(policies.Load()); err != nil {
			w.cfg.Logger.Error("k8s: list from cache", "error", err)
			return
		}
		w.cfg.OnState(ctx, st)
	}
	w.batcher.Notify() // the initial state
	w.batcher.Run(ctx, list)
	return nil
}

// policyNotifier is the policies' informer event handler: it calls f on
// every event but an update that leaves the spec as it was (meshd reads
// nothing else of a policy but its name): meshd's own status writes would
// otherwise count as changes, and an edit following one within the
// hold-off would wait for a batch.
func policyNotifier(f func()) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { f() },
		UpdateFunc: func(was, is any) {
			if sameSpec(was, is) {
				return
			}
			f()
		},
		DeleteFunc: func(any) { f() },
	}
}

// sameSpec reports whether two versions of a policy have equal specs.
func sameSpec(was, is any) bool {
	a, ok := was.(*unstructured.Unstructured)
	b, ok2 := is.(*unstructured.Unstructured)
	if !ok || !ok2 {
		return false
	}
	sa, hasA := a.Object["spec"]
	sb, hasB := b.Object["spec"]
	return hasA == hasB && equality.Semantic.DeepEqual(sa, sb)
}

// startSource hands on the Source's state after each batch of its changes.
func (w *Watcher) startSource(ctx context.Context) error {
	src := w.cfg.Source
	w.synced.Store(true)
	go func() {
		if err := src.Watch(ctx, w.batcher.Notify); err != nil {
			w.cfg.Logger.Error("k8s: source stopped", "error", err)
		}
	}()
	w.batcher.Notify() // the initial state
	w.batcher.Run(ctx, func(ctx context.Context, first time.Time) {
		st := src.State()
		st.ChangedAt = first
		w.cfg.OnState(ctx, st)
	})
	return nil
}

func (w *Watcher) policiesServed() (bool, error) {
	if w.cfg.PoliciesServed == nil {
		return true, nil
	}
	return w.cfg.PoliciesServed()
}

// watchPolicies starts the policies' informer, waits for its sync and
// publishes its lister.
func (w *Watcher) watchPolicies(ctx context.Context, handler cache.ResourceEventHandler, out *atomic.Pointer[cache.GenericLister]) error {
	dyn := dynamicinformer.NewDynamicSharedInformerFactory(w.cfg.Dynamic, w.cfg.Resync)
	inf := dyn.ForResource(PolicyResource)
	if err := inf.Informer().SetTransform(stripManagedFields); err != nil {
		return fmt.Errorf("k8s: informer transform: %w", err)
	}
	if _, err := inf.Informer().AddEventHandler(handler); err != nil {
		return fmt.Errorf("k8s: informer handler: %w", err)
	}
	dyn.Start(ctx.Done())
	go func() { <-ctx.Done(); dyn.Shutdown() }()
	for typ, ok := range dyn.WaitForCacheSync(ctx.Done()) {
		if !ok {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("k8s: %v informer did not sync", typ)
		}
	}
	lister := inf.Lister()
	out.Store(&lister)
	return nil
}

// awaitPolicies checks every PolicyRecheck whether the policies' API is
// served, and watches them from then on.
func (w *Watcher) awaitPolicies(ctx context.Context, handler cache.ResourceEventHandler, out *atomic.Pointer[cache.GenericLister]) {
	var c clock.WithTicker = clock.RealClock{}
	if w.cfg.Clock != nil {
		c = w.cfg.Clock
	}
	ticker := c.NewTicker(w.cfg.PolicyRecheck)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		}
		if served, err := w.policiesServed(); err != nil || !served {
			continue
		}
		if err := w.watchPolicies(ctx, handler, out); err != nil {
			w.cfg.Logger.Error("k8s: watch authorization policies", "error", err)
			return
		}
		w.cfg.Logger.Info("k8s: the AuthorizationPolicy CRD is installed: policies are watched")
		w.batcher.Notify()
		return
	}
}

// listPolicies lists the cached policies (none without a lister), sorted by
// namespace and name.
func listPolicies(l *cache.GenericLister) ([]*unstructured.Unstructured, error) {
	if l == nil {
		return nil, nil
	}
	objs, err := (*l).List(labels.Everything())
	if err != nil {
		return nil, err
	}
	out := make([]*unstructured.Unstructured, 0, len(objs))
	for _, o := range objs {
		if u, ok := o.(*unstructured.Unstructured); ok {
			out = append(out, u)
		}
	}
	sortPolicies(out)
	return out, nil
}

// sortPolicies sorts policies by namespace and name.
func sortPolicies(ps []*unstructured.Unstructured) {
	slices.SortFunc(ps, func(a, b *unstructured.Unstructured) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
	})
}

// PolicyAPIServed reports whether the apiserver serves AuthorizationPolicies
// (their CRD is installed).
func PolicyAPIServed(d discovery.DiscoveryInterface) (bool, error) {
	list, err := d.ServerResourcesForGroupVersion(PolicyResource.GroupVersion().String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("k8s: discover %s: %w", PolicyResource.GroupVersion(), err)
	}
	return slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == PolicyResource.Resource }), nil
}

// stripManagedFields drops what meshd never reads, to keep the caches small.
func stripManagedFields(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

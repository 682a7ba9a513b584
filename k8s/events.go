package k8s

import (
	"context"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// ProblemReporter turns Problems into Kubernetes Events (type Warning, on
// the object concerned) and log lines. Only problems that are new since the
// previous Report are sent, so a problem that persists across rebuilds is
// reported once. Report must be called from one goroutine.
type ProblemReporter struct {
	log         *slog.Logger
	recorder    record.EventRecorder
	broadcaster record.EventBroadcaster
	last        map[Problem]bool
}

// NewProblemReporter reports through client's Events API as component
// "meshd"; without a cluster (nil client, a local dir) it only logs. Stop
// it with Shutdown.
func NewProblemReporter(ctx context.Context, client kubernetes.Interface, log *slog.Logger) *ProblemReporter {
	if client == nil {
		return &ProblemReporter{log: log, last: map[Problem]bool{}}
	}
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &ProblemReporter{
		log:         log,
		broadcaster: b,
		recorder:    b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "meshd"}),
		last:        map[Problem]bool{},
	}
}

// Report sends the problems that were not in the previous report.
func (r *ProblemReporter) Report(problems []Problem) {
	now := make(map[Problem]bool, len(problems))
	for _, p := range problems {
		now[p] = true
		if r.last[p] {
			continue
		}
		r.log.Warn("k8s: object skipped", "kind", p.Kind, "namespace", p.Namespace, "name", p.Name, "reason", p.Reason, "problem", p.Message)
		r.Warn(p)
	}
	r.last = now
}

// Warn sends one Warning Event now (the recorder aggregates repeats); safe
// from any goroutine. Without a cluster it sends nothing: Report has logged.
func (r *ProblemReporter) Warn(p Problem) {
	if r.recorder == nil {
		return
	}
	apiVersion := "v1"
	if p.Kind == PolicyKind {
		apiVersion = PolicyResource.GroupVersion().String()
	}
	ref := &corev1.ObjectReference{Kind: p.Kind, APIVersion: apiVersion, Namespace: p.Namespace, Name: p.Name, UID: types.UID(p.UID)}
	r.recorder.Event(ref, corev1.EventTypeWarning, p.Reason, p.Message)
}

// Shutdown stops sending events.
func (r *ProblemReporter) Shutdown() {
	if r.broadcaster != nil {
		r.broadcaster.Shutdown()
	}
}

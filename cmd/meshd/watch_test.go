package main

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/k8s"
)

// TestConvertSafely: a state the converter panics on (a nil pod: no
// informer hands one on, it stands for a bug met on some object) is an
// error with the panic's stack, not a crash; a fresh converter then
// converts the next state.
func TestConvertSafely(t *testing.T) {
	_, _, err := convertSafely(k8s.NewConverter("cluster.local"), &k8s.State{Pods: vec.Of([]*corev1.Pod{nil})})
	if err == nil || !strings.Contains(err.Error(), "conversion failed") || !strings.Contains(err.Error(), "goroutine") {
		t.Fatalf("a state the converter panics on: %v", err)
	}
	snap, _, err := convertSafely(k8s.NewConverter("cluster.local"), &k8s.State{})
	if err != nil || snap == nil {
		t.Fatalf("an empty state: %v, %v", snap, err)
	}
}

package inject

import corev1 "k8s.io/api/core/v1"

// NeedsSecret exposes needsSecret to the tests.
func (i *Injector) NeedsSecret(pod *corev1.Pod) (proxyID, why string) { return i.needsSecret(pod) }

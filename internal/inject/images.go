package inject

import (
	corev1 "k8s.io/api/core/v1"
)

// Names in meshd's own pod (deploy/base/deployment.yaml) that say which
// images to inject.
const (
	// MeshdContainer runs meshd; its image also runs the init container.
	MeshdContainer = "meshd"
	// ProxyImageContainer is an init container of meshd's pod that runs
	// the sidecar image once (`envoy --version`), so the image is named
	// where Kustomize and Helm rewrite images, and checked to run.
	ProxyImageContainer = "proxy-image"
)

// ImagesFromPod returns the images meshd's own pod runs: the init image
// (its meshd container's) and the proxy image (its proxy-image init
// container's); "" for what the pod lacks.
func ImagesFromPod(pod *corev1.Pod) (initImage, proxyImage string) {
	for _, c := range pod.Spec.Containers {
		if c.Name == MeshdContainer {
			initImage = c.Image
		}
	}
	for _, c := range pod.Spec.InitContainers {
		if c.Name == ProxyImageContainer {
			proxyImage = c.Image
		}
	}
	return initImage, proxyImage
}

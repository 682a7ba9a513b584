// Package deploy holds meshd's Kubernetes manifests (base/, the Kustomize
// base; examples/) and the one place that names meshd's images:
// images.env, read by `make image`/hack/image.sh, by the Makefile, and
// through this package by meshd's defaults. The manifests name the same
// images (a test keeps them in step), and an in-cluster meshd injects the
// images its own pod runs, so Kustomize's `images:` or a Helm value that
// changes them changes what is injected too.
package deploy

import (
	_ "embed"
	"strings"
)

//go:embed images.env
var imagesEnv string

// Images are meshd's default images.
type Images struct {
	// Meshd runs meshd and, as the injected init container, `meshd iptables`.
	Meshd string
	// Proxy runs Envoy as the injected sidecar.
	Proxy string
}

// DefaultImages returns the images named in images.env.
func DefaultImages() Images {
	var im Images
	for _, line := range strings.Split(imagesEnv, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		switch k {
		case "MESHD_IMAGE":
			im.Meshd = v
		case "PROXY_IMAGE":
			im.Proxy = v
		}
	}
	return im
}

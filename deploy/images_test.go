package deploy_test

import (
	"os"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshd/meshd/deploy"
)

// TestImagesInStep: images.env names both images, and the base Deployment
// runs exactly those: meshd's container (also the init image) and the
// proxy image its pod checks first (meshd injects what its pod runs).
func TestImagesInStep(t *testing.T) {
	im := deploy.DefaultImages()
	if im.Meshd == "" || im.Proxy == "" {
		t.Fatalf("images.env: %+v", im)
	}
	b, err := os.ReadFile("base/deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	// the first document is the Deployment
	if err := yaml.Unmarshal([]byte(firstDoc(string(b))), &d); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range append(d.Spec.Template.Spec.InitContainers, d.Spec.Template.Spec.Containers...) {
		got[c.Name] = c.Image
	}
	if got["meshd"] != im.Meshd || got["proxy-image"] != im.Proxy {
		t.Errorf("deployment.yaml runs %v; images.env says meshd %s, proxy %s", got, im.Meshd, im.Proxy)
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		for _, a := range c.Args {
			if len(a) > 13 && (a[:13] == "--proxy-image" || a[:12] == "--init-image") {
				t.Errorf("deployment.yaml pins %s in args: Kustomize images: would not rewrite it", a)
			}
		}
	}
}

func firstDoc(s string) string {
	for i := 0; i+4 <= len(s); i++ {
		if s[i:i+4] == "\n---" {
			return s[:i]
		}
	}
	return s
}

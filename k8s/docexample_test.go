package k8s_test

import (
	"os"
	"regexp"
	"testing"

	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/model"
)

// TestLocalDirDocExample: the complete example of docs/local-dir.md
// converts without problems into the mesh the page describes: web-0 and
// client-0 meshed (STRICT), legacy-0 not, the web Service on 198.19.0.10:80
// with web-0's address behind it carrying web's SPIFFE ID.
func TestLocalDirDocExample(t *testing.T) {
	doc, err := os.ReadFile("../docs/local-dir.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllSubmatch(doc, -1)
	if len(blocks) != 1 {
		t.Fatalf("%d yaml blocks in docs/local-dir.md, want the one example", len(blocks))
	}
	st, err := k8s.StateFromYAML(blocks[0][1])
	if err != nil {
		t.Fatal(err)
	}
	snap, problems := k8s.Convert(st, "cluster.local")
	if len(problems) != 0 {
		t.Errorf("problems: %v", problems)
	}
	meshed := map[string]bool{}
	for _, w := range snap.Workloads {
		meshed[w.Key()] = w.Meshed
		if w.Meshed && w.Mode != model.ModeStrict {
			t.Errorf("%s: mode %s, want STRICT", w.Key(), w.Mode)
		}
	}
	if !meshed["web-0.demo"] || !meshed["client-0.demo"] || meshed["legacy-0.legacy"] || len(meshed) != 3 {
		t.Errorf("workloads meshed: %v", meshed)
	}
	if snap.Services.Len() != 1 {
		t.Fatalf("services: %d, want web", snap.Services.Len())
	}
	svc := snap.Services.At(0)
	if svc.Key() != "web.demo" || svc.ClusterIP != "198.19.0.10" || len(svc.Ports) != 1 || svc.Ports[0].Port != 80 || !svc.Ports[0].Protocol.IsHTTP() {
		t.Errorf("service %s %s %+v", svc.Key(), svc.ClusterIP, svc.Ports)
	}
	if len(svc.Endpoints) != 1 || svc.Endpoints[0].Address != "198.18.0.10" || svc.Endpoints[0].Port != 8080 ||
		svc.Endpoints[0].Identity != "spiffe://cluster.local/ns/demo/sa/web" {
		t.Errorf("endpoints %+v", svc.Endpoints)
	}
}

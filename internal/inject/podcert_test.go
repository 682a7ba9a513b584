package inject_test

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/inject"
	"github.com/meshd/meshd/k8s"
)

// noIssuer fails the test if meshd issues anything: in pod-certificate
// mode the kubelet asks for the sidecar's certificate.
type noIssuer struct{ t *testing.T }

func (n noIssuer) Issue(context.Context, ca.Request) (*ca.Certificate, error) {
	n.t.Error("a certificate was issued at admission")
	return nil, context.Canceled
}

func (noIssuer) Bundle(context.Context) ([]byte, error) { return nil, nil }

// TestAdmitPodCertificate: in pod-certificate mode a pod (with or without
// annotations of its own) gets a projected credentials volume (the
// kubelet's key and meshd's certificate, the ClusterTrustBundle, the
// bootstrap from its annotations), no proxy ID, and no Secret is written.
func TestAdmitPodCertificate(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	inj, err := inject.New(inject.Config{Client: client, Issuer: noIssuer{t}, TrustDomain: "cluster.local", MeshdNamespace: "meshd-system",
		ProxyImage: "envoy:test", InitImage: "meshd:test", PodCertificateSigner: "meshd.io/spiffe"})
	if err != nil {
		t.Fatal(err)
	}
	annotated := appPod()
	annotated.Annotations = map[string]string{"team": "shop"}
	for name, in := range map[string]func() *corev1.Pod{"bare pod": appPod, "annotated pod": func() *corev1.Pod { return annotated.DeepCopy() }} {
		t.Run(name, func(t *testing.T) {
			pod := apply(t, in(), inj.Admit(ctx, review(t, in(), false)))
			if pod.Annotations[k8s.AnnotationStatus] != "injected" || pod.Annotations[k8s.AnnotationProxyID] != "" ||
				!strings.Contains(pod.Annotations[inject.AnnotationBootstrap], "/etc/meshd/proxy/xds-client.sds.yaml") {
				t.Fatalf("annotations %v", pod.Annotations)
			}
			v := pod.Spec.Volumes[len(pod.Spec.Volumes)-1]
			if v.Name != inject.VolumeCreds || v.Projected == nil || len(v.Projected.Sources) != 3 {
				t.Fatalf("credentials volume %+v", v)
			}
			pc, ctb, files := v.Projected.Sources[0].PodCertificate, v.Projected.Sources[1].ClusterTrustBundle, v.Projected.Sources[2].DownwardAPI
			if pc == nil || pc.SignerName != "meshd.io/spiffe" || pc.KeyType != "ECDSAP256" || pc.KeyPath != bootstrap.FileKey || pc.CertificateChainPath != bootstrap.FileCertChain {
				t.Errorf("podCertificate source %+v", pc)
			}
			if ctb == nil || ctb.SignerName == nil || *ctb.SignerName != "meshd.io/spiffe" || ctb.Path != bootstrap.FileRootCert || ctb.LabelSelector == nil {
				t.Errorf("clusterTrustBundle source %+v", ctb)
			}
			if files == nil || len(files.Items) != 3 {
				t.Fatalf("downwardAPI source %+v", files)
			}
			for _, item := range files.Items {
				ann := strings.TrimSuffix(strings.TrimPrefix(item.FieldRef.FieldPath, "metadata.annotations['"), "']")
				if pod.Annotations[ann] == "" {
					t.Errorf("file %s comes from annotation %s, which the pod does not carry", item.Path, ann)
				}
			}
		})
	}
	if s, _ := client.CoreV1().Secrets("demo").List(ctx, metav1.ListOptions{}); len(s.Items) != 0 {
		t.Errorf("%d Secrets written, want none", len(s.Items))
	}
}

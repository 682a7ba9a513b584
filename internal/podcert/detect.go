package podcert

import (
	"fmt"

	certsv1beta1 "k8s.io/api/certificates/v1beta1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/discovery"
)

// Mode is where sidecars' xDS client credentials come from.
type Mode string

const (
	// ModePodCertificate: a podCertificate projected volume; the kubelet
	// makes the key on the node and meshd signs (this package).
	ModePodCertificate Mode = "pod-certificate"
	// ModeSecret: a per-pod Secret meshd writes at injection (key made by
	// meshd).
	ModeSecret Mode = "secret"
)

// Detect reports whether the apiserver serves what the pod-certificate
// mode needs (PodCertificateRequest and ClusterTrustBundle in
// certificates.k8s.io/v1beta1), and why not. It cannot see the kubelets:
// they need the PodCertificateRequest and ClusterTrustBundleProjection
// feature gates too.
func Detect(d discovery.DiscoveryInterface) (bool, string) {
	gv := certsv1beta1.SchemeGroupVersion.String()
	list, err := d.ServerResourcesForGroupVersion(gv)
	if apierrors.IsNotFound(err) {
		return false, fmt.Sprintf("the apiserver does not serve %s (enable it with --runtime-config %s=true and the feature gates PodCertificateRequest and ClusterTrustBundle)", gv, gv)
	}
	if err != nil {
		return false, fmt.Sprintf("discovery of %s failed: %v", gv, err)
	}
	have := map[string]bool{}
	for _, r := range list.APIResources {
		have[r.Name] = true
	}
	for _, want := range []string{"podcertificaterequests", "podcertificaterequests/status", "clustertrustbundles"} {
		if !have[want] {
			return false, fmt.Sprintf("the apiserver serves %s but not %s (feature gates PodCertificateRequest and ClusterTrustBundle)", gv, want)
		}
	}
	return true, fmt.Sprintf("the apiserver serves %s podcertificaterequests and clustertrustbundles", gv)
}

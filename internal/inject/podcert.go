package inject

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/podcert"
)

// Pod-certificate mode: the sidecar's credentials volume is projected by
// the kubelet, not a Secret meshd writes. It holds
//   - key.pem and cert-chain.pem: the key the kubelet made on the node and
//     the chain meshd's signer issued for it (podCertificate source),
//     refreshed by the kubelet at the time the signer set. Two files, not
//     the kubelet's single credential bundle: Envoy's admin config dump
//     shows a certificate file whole but redacts a key file, and the
//     kubelet swaps the volume's files atomically anyway;
//   - root-cert.pem: the mesh trust bundle from the signer's
//     ClusterTrustBundle (clusterTrustBundle source), followed through root
//     rotations;
//   - the bootstrap and the path-based SDS files, from annotations meshd
//     puts on the pod (downwardAPI source): they hold no secret.
const (
	AnnotationBootstrap = "meshd.io/bootstrap"
	annotationClientSDS = "meshd.io/xds-client-sds"
	annotationCASDS     = "meshd.io/xds-ca-sds"
	// PodCertificateKeyType is the key the kubelet makes for the sidecar.
	PodCertificateKeyType = "ECDSAP256"
)

// podCertificateFiles renders what the sidecar reads besides its key and
// certificate, as pod annotations (file name in the volume -> content is
// fixed by podCertificateVolume).
func (i *Injector) podCertificateFiles(ns, sa, pod string, probes map[string]bootstrap.AppProbe) (map[string]string, error) {
	b, err := i.render(ns, sa, pod, probes)
	if err != nil {
		return nil, err
	}
	y, err := bootstrap.YAML(b)
	if err != nil {
		return nil, err
	}
	sds, err := bootstrap.SDSFiles(i.cfg.CredsDir)
	if err != nil {
		return nil, err
	}
	return map[string]string{AnnotationBootstrap: string(y),
		annotationClientSDS: string(sds[bootstrap.FileClientSDS]), annotationCASDS: string(sds[bootstrap.FileCASDS])}, nil
}

// podCertificateVolume is the sidecar's credentials volume in
// pod-certificate mode.
func (i *Injector) podCertificateVolume() corev1.Volume {
	field := func(file, annotation string) corev1.DownwardAPIVolumeFile {
		return corev1.DownwardAPIVolumeFile{Path: file, FieldRef: &corev1.ObjectFieldSelector{
			FieldPath: fmt.Sprintf("metadata.annotations['%s']", annotation)}}
	}
	signer := i.cfg.PodCertificateSigner
	return corev1.Volume{Name: VolumeCreds, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{
			{PodCertificate: &corev1.PodCertificateProjection{SignerName: signer, KeyType: PodCertificateKeyType,
				KeyPath: bootstrap.FileKey, CertificateChainPath: bootstrap.FileCertChain}},
			{ClusterTrustBundle: &corev1.ClusterTrustBundleProjection{SignerName: &signer, Path: bootstrap.FileRootCert,
				LabelSelector: &metav1.LabelSelector{MatchLabels: podcert.BundleLabels()}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{
				field(bootstrap.FileBootstrap, AnnotationBootstrap),
				field(bootstrap.FileClientSDS, annotationClientSDS),
				field(bootstrap.FileCASDS, annotationCASDS)}}},
		}}}}
}

// xdsServerSAN is the SPIFFE ID the sidecar requires of meshd.
func (i *Injector) xdsServerSAN() string {
	return ca.Identity{TrustDomain: i.cfg.TrustDomain, Namespace: i.cfg.MeshdNamespace, ServiceAccount: "meshd"}.String()
}

// Package podcert makes meshd a Kubernetes pod-certificate signer
// (KEP-4317): the kubelet makes a pod's key on the node and asks for a
// certificate with a PodCertificateRequest naming meshd's signer; meshd
// checks the request against the pod, signs the public key with the mesh CA
// and answers in the request's status. It also publishes the mesh trust
// bundle as a ClusterTrustBundle for the signer, and detects whether the
// cluster serves these APIs at all.
//
// Where it sits: beside the pipeline, like the injector. It signs through a
// ca.Issuer and reads pods from the apiserver; cmd/meshd runs the signer and
// the bundle publisher as leader-only singletons and decides the mode.
package podcert

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"time"

	certsv1beta1 "k8s.io/api/certificates/v1beta1"
	corev1 "k8s.io/api/core/v1"
)

// DefaultSignerName is the signer meshd answers for.
const DefaultSignerName = "meshd.io/spiffe"

// Lifetime bounds the apiserver enforces on what a signer issues.
const (
	MinLifetime = time.Hour        // a leaf may not live shorter
	refreshEdge = 10 * time.Minute // beginRefreshAt is at least this far from either end
)

// Reasons of the Denied and Failed conditions meshd sets. UnsupportedKeyType
// and InvalidUnverifiedUserAnnotations are the API's own.
const (
	ReasonPodNotFound       = "PodNotFound"
	ReasonPodMismatch       = "PodMismatch"
	ReasonSAMismatch        = "ServiceAccountMismatch"
	ReasonNodeMismatch      = "NodeMismatch"
	ReasonPodNotRunning     = "PodFinished"
	ReasonLifetimeTooLong   = "LifetimeTooLong"
	ReasonUnsupportedKey    = certsv1beta1.PodCertificateRequestConditionUnsupportedKeyType
	ReasonUserAnnotations   = certsv1beta1.PodCertificateRequestConditionInvalidUserConfig
	ReasonMalformedRequest  = "MalformedRequest"
	ReasonIssueFailed       = "IssueFailed"
	ReasonIssued            = "Issued"
	supportedKeyTypesAdvice = "meshd signs ECDSAP256, ECDSAP384, RSA3072 and RSA4096 keys (Envoy cannot use ED25519); use keyType ECDSAP256"
)

// verdict is why a request is refused: Reason is a condition reason,
// Message says it to a person.
type verdict struct {
	Reason, Message string
}

func (v *verdict) Error() string { return v.Reason + ": " + v.Message }

func deny(reason, format string, args ...any) *verdict {
	return &verdict{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// checkPod compares what the apiserver vouched for in the request (it
// checked the creating node against the pod) with the pod meshd sees now.
// pod is nil when the pod does not exist.
func checkPod(req *certsv1beta1.PodCertificateRequest, pod *corev1.Pod) *verdict {
	s := req.Spec
	name := req.Namespace + "/" + s.PodName
	if pod == nil {
		return deny(ReasonPodNotFound, "pod %s does not exist", name)
	}
	if pod.UID != s.PodUID {
		return deny(ReasonPodMismatch, "pod %s has UID %s, the request names UID %s (a deleted pod of the same name?)", name, pod.UID, s.PodUID)
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	if sa != s.ServiceAccountName {
		return deny(ReasonSAMismatch, "pod %s runs as service account %q, the request names %q", name, sa, s.ServiceAccountName)
	}
	if pod.Spec.NodeName != string(s.NodeName) {
		return deny(ReasonNodeMismatch, "pod %s is on node %q, the request comes for node %q", name, pod.Spec.NodeName, s.NodeName)
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed || pod.DeletionTimestamp != nil {
		return deny(ReasonPodNotRunning, "pod %s has finished or is being deleted", name)
	}
	return nil
}

// checkRequest checks what meshd itself requires of a request: no user
// annotations (meshd defines none), a lifetime cap it accepts, a key type
// Envoy can use. It returns the public key to certify.
func checkRequest(req *certsv1beta1.PodCertificateRequest, maxLifetime time.Duration) (crypto.PublicKey, *verdict) {
	s := req.Spec
	if len(s.UnverifiedUserAnnotations) > 0 {
		for k := range s.UnverifiedUserAnnotations {
			return nil, deny(ReasonUserAnnotations, "meshd's signer takes no userAnnotations; %q is not recognised", k)
		}
	}
	if s.MaxExpirationSeconds == nil {
		return nil, deny(ReasonMalformedRequest, "spec.maxExpirationSeconds is not set")
	}
	if asked := time.Duration(*s.MaxExpirationSeconds) * time.Second; asked > maxLifetime {
		return nil, deny(ReasonLifetimeTooLong, "maxExpirationSeconds %d (%s) is beyond meshd's maximum of %s; ask for %d or less",
			*s.MaxExpirationSeconds, asked, maxLifetime, int64(maxLifetime/time.Second))
	}
	pub, err := requestKey(s)
	if err != nil {
		return nil, deny(ReasonMalformedRequest, "%v", err)
	}
	if !supportedKey(pub) {
		return nil, deny(ReasonUnsupportedKey, "key of type %T: %s", pub, supportedKeyTypesAdvice)
	}
	return pub, nil
}

// requestKey extracts the public key: from the stub PKCS#10 request (whose
// signature the apiserver verified at creation; checked again here, it is
// cheap), else from the deprecated pkixPublicKey (whose proof of possession
// the apiserver verified).
func requestKey(s certsv1beta1.PodCertificateRequestSpec) (crypto.PublicKey, error) {
	//lint:ignore SA1019 kubelets before the stub PKCS#10 request still send pkixPublicKey.
	pkix := s.PKIXPublicKey
	switch {
	case len(s.StubPKCS10Request) > 0:
		csr, err := x509.ParseCertificateRequest(s.StubPKCS10Request)
		if err != nil {
			return nil, fmt.Errorf("spec.stubPKCS10Request does not parse: %w", err)
		}
		if err := csr.CheckSignature(); err != nil {
			return nil, fmt.Errorf("spec.stubPKCS10Request: signature: %w", err)
		}
		return csr.PublicKey, nil
	case len(pkix) > 0:
		pub, err := x509.ParsePKIXPublicKey(pkix)
		if err != nil {
			return nil, fmt.Errorf("spec.pkixPublicKey does not parse: %w", err)
		}
		return pub, nil
	}
	return nil, errors.New("the request carries no public key")
}

func supportedKey(pub crypto.PublicKey) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return k.Curve == elliptic.P256() || k.Curve == elliptic.P384()
	case *rsa.PublicKey:
		return k.N.BitLen() == 3072 || k.N.BitLen() == 4096
	}
	return false
}

// lifetime is the TTL to ask the CA for: meshd's own (--cert-ttl) within
// what the request and the apiserver allow. The CA back-dates notBefore by
// backdate, which counts into the lifetime the apiserver measures.
func lifetime(certTTL time.Duration, maxExpirationSeconds int32, backdate time.Duration) time.Duration {
	ttl := max(certTTL, MinLifetime-backdate)
	return min(ttl, time.Duration(maxExpirationSeconds)*time.Second-backdate)
}

// LongestLifetime is the longest a certificate the signer issues with
// --cert-ttl certTTL lives (meshd's lifetime, raised to the apiserver's
// minimum; requests may ask for less, never more).
func LongestLifetime(certTTL time.Duration) time.Duration {
	return lifetime(certTTL, math.MaxInt32, backdate) + backdate
}

// refreshAt is when the kubelet should start refreshing: meshd's renewal
// policy (at renewAt of --cert-ttl, or of the lifetime if shorter; a
// certificate raised to the apiserver's one-hour minimum is still
// refreshed on meshd's cadence), kept 10 minutes from either end as the
// apiserver requires.
func refreshAt(notBefore, notAfter time.Time, certTTL time.Duration, renewAt float64) time.Time {
	span := min(notAfter.Sub(notBefore), certTTL+backdate)
	t := notBefore.Add(time.Duration(float64(span) * renewAt)).Truncate(time.Second)
	if lo := notBefore.Add(refreshEdge); t.Before(lo) {
		t = lo
	}
	if hi := notAfter.Add(-refreshEdge); t.After(hi) {
		t = hi
	}
	return t
}

// terminal reports whether a request already carries Issued, Denied or
// Failed: its status can no longer change, so it is never answered twice.
func terminal(req *certsv1beta1.PodCertificateRequest) bool {
	for _, c := range req.Status.Conditions {
		switch c.Type {
		case certsv1beta1.PodCertificateRequestConditionTypeIssued, certsv1beta1.PodCertificateRequestConditionTypeDenied,
			certsv1beta1.PodCertificateRequestConditionTypeFailed:
			return true
		}
	}
	return false
}

// pemCerts returns each CERTIFICATE block of a PEM bundle, re-encoded
// without headers.
func pemCerts(data []byte) [][]byte {
	var out [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		if b.Type == "CERTIFICATE" {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.Bytes}))
		}
	}
}

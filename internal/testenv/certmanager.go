package testenv

import (
	"context"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// CertManagerCAIssuer starts cert-manager (if needed) and brings up a CA
// Issuer named name in ns: SelfSigned ClusterIssuer -> CA Certificate ->
// CA Issuer, waiting until it is Ready. It returns a cert-manager client.
func (e *Env) CertManagerCAIssuer(t testing.TB, ns, name string) cmclient.Interface {
	t.Helper()
	e.StartCertManager(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cm, err := cmclient.NewForConfig(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	// The CRDs may just have been applied: retry until the API serves them.
	create := func(what string, f func() error) {
		t.Helper()
		var last error
		if err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(context.Context) (bool, error) {
			last = f()
			return last == nil || apierrors.IsAlreadyExists(last), nil
		}); err != nil {
			t.Fatalf("create %s: %v (last: %v)", what, err, last)
		}
	}
	create("ClusterIssuer selfsigned", func() error {
		_, err := cm.CertmanagerV1().ClusterIssuers().Create(ctx, &cmapi.ClusterIssuer{ObjectMeta: metav1.ObjectMeta{Name: "selfsigned"},
			Spec: cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{SelfSigned: &cmapi.SelfSignedIssuer{}}}}, metav1.CreateOptions{})
		return err
	})
	create("CA Certificate", func() error {
		_, err := cm.CertmanagerV1().Certificates(ns).Create(ctx, &cmapi.Certificate{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: cmapi.CertificateSpec{IsCA: true, CommonName: name + " (cert-manager CA)", SecretName: name,
				PrivateKey: &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256},
				IssuerRef:  cmmeta.IssuerReference{Name: "selfsigned", Kind: "ClusterIssuer", Group: "cert-manager.io"}}}, metav1.CreateOptions{})
		return err
	})
	create("CA Issuer", func() error {
		_, err := cm.CertmanagerV1().Issuers(ns).Create(ctx, &cmapi.Issuer{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: name}}}}, metav1.CreateOptions{})
		return err
	})
	if err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		iss, err := cm.CertmanagerV1().Issuers(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range iss.Status.Conditions {
			if c.Type == cmapi.IssuerConditionReady && c.Status == cmmeta.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("CA Issuer %s/%s never became Ready: %v", ns, name, err)
	}
	return cm
}

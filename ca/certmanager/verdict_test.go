package certmanager

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmfake "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestVerdict: every way a CertificateRequest ends, and the reason the
// error carries.
func TestVerdict(t *testing.T) {
	ref := cmmeta.IssuerReference{Kind: "ClusterIssuer", Name: "vault"}
	cond := func(typ cmapi.CertificateRequestConditionType, st cmmeta.ConditionStatus, reason, msg string) cmapi.CertificateRequestCondition {
		return cmapi.CertificateRequestCondition{Type: typ, Status: st, Reason: reason, Message: msg}
	}
	for _, tc := range []struct {
		name   string
		conds  []cmapi.CertificateRequestCondition
		cert   []byte
		done   bool
		errHas string
	}{
		{name: "new"},
		{name: "approved, pending", conds: []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionApproved, cmmeta.ConditionTrue, "cert-manager.io", ""),
			cond(cmapi.CertificateRequestConditionReady, cmmeta.ConditionFalse, cmapi.CertificateRequestReasonPending, "waiting")}},
		{name: "issued", cert: []byte("pem"), done: true, conds: []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionReady, cmmeta.ConditionTrue, cmapi.CertificateRequestReasonIssued, "")}},
		{name: "ready without a certificate waits", conds: []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionReady, cmmeta.ConditionTrue, cmapi.CertificateRequestReasonIssued, "")}},
		{name: "denied", errHas: "denied: PolicyDenied: no", conds: []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionDenied, cmmeta.ConditionTrue, "PolicyDenied", "no")}},
		{name: "invalid", errHas: "invalid: BadCSR: bad", conds: []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionInvalidRequest, cmmeta.ConditionTrue, "BadCSR", "bad")}},
		{name: "failed", errHas: "failed at ClusterIssuer/vault: Failed: backend said no", conds: []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionReady, cmmeta.ConditionFalse, cmapi.CertificateRequestReasonFailed, "backend said no")}},
	} {
		cr := &cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{Name: "meshd-x"}}
		cr.Status.Conditions, cr.Status.Certificate = tc.conds, tc.cert
		done, err := verdict(cr, ref)
		if done != tc.done || (err == nil) != (tc.errHas == "") || (err != nil && !strings.Contains(err.Error(), tc.errHas)) {
			t.Errorf("%s: done=%v err=%v; want done=%v error containing %q", tc.name, done, err, tc.done, tc.errHas)
		}
	}
}

// TestCollectGarbage: a request older than twice the timeout that nobody
// here waits for is deleted; a young one (another replica may wait for it)
// and one this replica waits for stay.
func TestCollectGarbage(t *testing.T) {
	now := time.Now()
	mk := func(name string, age time.Duration) *cmapi.CertificateRequest {
		return &cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "meshd-system",
			Labels: map[string]string{LabelManaged: "true"}, CreationTimestamp: metav1.NewTime(now.Add(-age))}}
	}
	objs := []*cmapi.CertificateRequest{mk("crashed", time.Hour), mk("young", 10*time.Second), mk("mine", time.Hour)}
	client := cmfake.NewSimpleClientset(objs[0], objs[1], objs[2])
	i, err := New(Config{Client: client, Namespace: "meshd-system", IssuerRef: cmmeta.IssuerReference{Name: "ca"}, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	i.waiters["mine"] = make(chan *cmapi.CertificateRequest, 1)
	i.collectGarbage(context.Background(), []any{objs[0], objs[1], objs[2]}, now)
	list, err := client.CertmanagerV1().CertificateRequests("meshd-system").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, cr := range list.Items {
		left = append(left, cr.Name)
	}
	slices.Sort(left)
	if !slices.Equal(left, []string{"mine", "young"}) {
		t.Errorf("left %v, want [mine young]", left)
	}
}

package inject

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
)

// ReconcileConfig says what the reconciler compares against.
type ReconcileConfig struct {
	// InUse returns the proxy IDs pods carry, with the pod carrying each;
	// ok is false while that view is not complete (informers not synced):
	// then nothing is deleted.
	InUse func() (pods map[string]PodRef, ok bool)
	// Bundle returns the current trust bundle; a Secret holding another one
	// is refreshed (root rotation).
	Bundle func() []byte
	// WebhookName is the MutatingWebhookConfiguration whose caBundle is
	// kept on Bundle ("" to leave it alone).
	WebhookName string
	// OrphanGrace protects a Secret whose pod is not in InUse's view yet
	// (the writer saw the pod first; default 2m).
	OrphanGrace time.Duration
}

// PodRef names the pod that carries a proxy ID.
type PodRef struct {
	Name string
	UID  types.UID
}

// ReconcileResult counts what one pass did.
type ReconcileResult struct {
	Refreshed, Deleted, Owned int
	WebhookPatched            bool
}

// Reconcile makes one pass over the credentials Secrets: a certificate past
// two thirds of its lifetime, or a bundle other than the current one, is
// re-issued; a Secret no pod uses (past the grace period) is deleted; the
// webhook's caBundle follows the bundle. It runs as a singleton (leader).
func (i *Injector) Reconcile(ctx context.Context, rc ReconcileConfig) (ReconcileResult, error) {
	var res ReconcileResult
	if rc.OrphanGrace == 0 {
		rc.OrphanGrace = 2 * time.Minute
	}
	list, err := i.cfg.Client.CoreV1().Secrets("").List(ctx, metav1.ListOptions{LabelSelector: LabelProxyID})
	if err != nil {
		return res, fmt.Errorf("inject: list sidecar Secrets: %w", err)
	}
	inUse, complete := rc.InUse()
	bundle := rc.Bundle()
	now := i.cfg.Clock.Now()
	var errs []error
	for idx := range list.Items {
		s := &list.Items[idx]
		id := s.Labels[LabelProxyID]
		age := now.Sub(s.CreationTimestamp.Time)
		pod, used := inUse[id]
		if complete && !used && !s.CreationTimestamp.IsZero() && age > rc.OrphanGrace {
			err := i.cfg.Client.CoreV1().Secrets(s.Namespace).Delete(ctx, s.Name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, err)
				continue
			}
			res.Deleted++
			i.cfg.Logger.Info("inject: removed the Secret of a gone proxy", "secret", s.Namespace+"/"+s.Name)
			continue
		}
		if due, why := i.refreshDue(s, bundle, now); due {
			if err := i.refresh(ctx, s); err != nil {
				errs = append(errs, err)
				continue
			}
			res.Refreshed++
			i.cfg.Logger.Info("inject: sidecar credentials refreshed", "secret", s.Namespace+"/"+s.Name, "reason", why)
		}
		if used && pod.UID != "" && !ownedBy(s, pod.UID) {
			if err := i.own(ctx, s, pod); err != nil {
				errs = append(errs, err)
				continue
			}
			res.Owned++
		}
	}
	if rc.WebhookName != "" {
		patched, err := i.patchCABundle(ctx, rc.WebhookName, bundle)
		res.WebhookPatched = patched
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}

func ownedBy(s *corev1.Secret, uid types.UID) bool {
	for _, o := range s.OwnerReferences {
		if o.UID == uid {
			return true
		}
	}
	return false
}

// own makes the pod the owner of its credentials Secret: Kubernetes'
// garbage collector deletes the Secret with the pod. The writer creates
// Secrets owned; this covers those an older meshd wrote at admission,
// before the pod had a UID (until then, the orphan sweep covers them).
func (i *Injector) own(ctx context.Context, s *corev1.Secret, pod PodRef) error {
	latest, err := i.cfg.Client.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("inject: Secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	no := false
	latest.OwnerReferences = append(latest.OwnerReferences, metav1.OwnerReference{APIVersion: "v1", Kind: "Pod",
		Name: pod.Name, UID: pod.UID, BlockOwnerDeletion: &no})
	if _, err := i.cfg.Client.CoreV1().Secrets(s.Namespace).Update(ctx, latest, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("inject: Secret %s/%s: owner pod %s: %w", s.Namespace, s.Name, pod.Name, err)
	}
	return nil
}

// refreshDue: past two thirds of the certificate's lifetime, unreadable,
// or another bundle than the current one.
func (i *Injector) refreshDue(s *corev1.Secret, bundle []byte, now time.Time) (bool, string) {
	certs, err := ca.ParseCertsPEM(s.Data[bootstrap.FileCertChain])
	if err != nil || len(certs) == 0 {
		return true, "certificate unreadable"
	}
	leaf := certs[0]
	if life := leaf.NotAfter.Sub(leaf.NotBefore); now.After(leaf.NotBefore.Add(life * 2 / 3)) {
		return true, "certificate past two thirds of its lifetime"
	}
	if len(bundle) > 0 && !bytes.Equal(s.Data[bootstrap.FileRootCert], bundle) {
		return true, "trust bundle changed"
	}
	return false, ""
}

// refresh re-renders a Secret's credentials for the same proxy ID.
func (i *Injector) refresh(ctx context.Context, s *corev1.Secret) error {
	sa := s.Annotations[annotationSA]
	if sa == "" {
		return fmt.Errorf("inject: Secret %s/%s lacks %s", s.Namespace, s.Name, annotationSA)
	}
	probes, err := secretProbes(s)
	if err != nil {
		return err
	}
	data, _, err := i.credentials(ctx, s.Namespace, sa, s.Annotations[annotationPod], s.Labels[LabelProxyID], probes)
	if err != nil {
		return err
	}
	s.Data = data
	if _, err := i.cfg.Client.CoreV1().Secrets(s.Namespace).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("inject: update Secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return nil
}

// patchCABundle sets every webhook's caBundle of the configuration to the
// bundle; it reports whether it changed anything.
func (i *Injector) patchCABundle(ctx context.Context, name string, bundle []byte) (bool, error) {
	api := i.cfg.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	mwc, err := api.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("inject: webhook configuration %s: %w", name, err)
	}
	changed := false
	for k := range mwc.Webhooks {
		if !bytes.Equal(mwc.Webhooks[k].ClientConfig.CABundle, bundle) {
			mwc.Webhooks[k].ClientConfig.CABundle = bundle
			changed = true
		}
	}
	if !changed {
		return false, nil
	}
	if _, err := api.Update(ctx, mwc, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("inject: patch caBundle of %s: %w", name, err)
	}
	i.cfg.Logger.Info("inject: webhook caBundle set", "webhook", name)
	return true, nil
}

// Run reconciles every period until ctx ends.
func (i *Injector) Run(ctx context.Context, rc ReconcileConfig, every time.Duration) error {
	t := i.cfg.Clock.NewTicker(every)
	defer t.Stop()
	for {
		if _, err := i.Reconcile(ctx, rc); err != nil && ctx.Err() == nil {
			i.cfg.Logger.Warn("inject: reconcile", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
	}
}

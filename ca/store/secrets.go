package store

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SecretClient is the part of a typed Secrets client (one namespace) the
// store uses: client.CoreV1().Secrets(namespace).
type SecretClient interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Secret, error)
	Create(ctx context.Context, s *corev1.Secret, opts metav1.CreateOptions) (*corev1.Secret, error)
	Update(ctx context.Context, s *corev1.Secret, opts metav1.UpdateOptions) (*corev1.Secret, error)
}

// Secrets keeps each record as an Opaque Secret of the same name; the
// version is the Secret's resourceVersion, so the API server arbitrates
// concurrent writers. Secrets it creates are labelled managed-by meshd;
// an Update keeps the Secret's other metadata (labels, owners).
type Secrets struct{ Client SecretClient }

var _ Store = Secrets{}

// Get implements Store.
func (s Secrets) Get(ctx context.Context, name string) (*Record, error) {
	sec, err := s.Client.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, secretError(name, err)
	}
	return recordOf(sec), nil
}

// Create implements Store.
func (s Secrets) Create(ctx context.Context, r *Record) (*Record, error) {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: r.Name, Annotations: r.Annotations,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "meshd"}},
		Type: corev1.SecretTypeOpaque,
		Data: r.Data,
	}
	created, err := s.Client.Create(ctx, sec, metav1.CreateOptions{})
	if err != nil {
		return nil, secretError(r.Name, err)
	}
	return recordOf(created), nil
}

// Update implements Store.
func (s Secrets) Update(ctx context.Context, r *Record) (*Record, error) {
	cur, err := s.Client.Get(ctx, r.Name, metav1.GetOptions{})
	if err != nil {
		return nil, secretError(r.Name, err)
	}
	if cur.ResourceVersion != r.Version {
		return nil, fmt.Errorf("secret %s (version %s, now %s): %w", r.Name, r.Version, cur.ResourceVersion, ErrConflict)
	}
	next := cur.DeepCopy()
	next.Data, next.Annotations = r.Data, r.Annotations
	updated, err := s.Client.Update(ctx, next, metav1.UpdateOptions{})
	if err != nil {
		return nil, secretError(r.Name, err)
	}
	return recordOf(updated), nil
}

func recordOf(s *corev1.Secret) *Record {
	return &Record{Name: s.Name, Data: s.Data, Annotations: s.Annotations, Version: s.ResourceVersion}
}

// secretError turns the API server's answers into the Store's errors,
// keeping its message.
func secretError(name string, err error) error {
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("secret %s: %w (%v)", name, ErrNotFound, err)
	case apierrors.IsAlreadyExists(err):
		return fmt.Errorf("secret %s: %w (%v)", name, ErrExists, err)
	case apierrors.IsConflict(err):
		return fmt.Errorf("secret %s: %w (%v)", name, ErrConflict, err)
	}
	return fmt.Errorf("secret %s: %w", name, err)
}

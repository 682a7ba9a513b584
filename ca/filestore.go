package ca

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// FileSecrets keeps CA Secrets as directories of files (Dir/<name>/<key>),
// for `meshd serve --local-dir` and `meshd bootstrap` outside a cluster. It
// implements SecretClient with the same create-if-absent semantics: Create
// of an existing Secret fails with AlreadyExists.
type FileSecrets struct{ Dir string }

var secretsResource = schema.GroupResource{Resource: "secrets"}

// Get implements SecretClient.
func (f FileSecrets) Get(_ context.Context, name string, _ metav1.GetOptions) (*corev1.Secret, error) {
	dir := filepath.Join(f.Dir, name)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, apierrors.NewNotFound(secretsResource, name)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: read %s: %w", dir, err)
	}
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.Dir}, Data: map[string][]byte{}}
	for _, e := range entries {
		if e.Type().IsRegular() {
			if s.Data[e.Name()], err = os.ReadFile(filepath.Join(dir, e.Name())); err != nil {
				return nil, fmt.Errorf("ca: read %s: %w", e.Name(), err)
			}
		}
	}
	return s, nil
}

// Create implements SecretClient: it writes into a temporary directory and
// renames it into place, so a reader never sees half a Secret.
func (f FileSecrets) Create(_ context.Context, s *corev1.Secret, _ metav1.CreateOptions) (*corev1.Secret, error) {
	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	tmp, err := os.MkdirTemp(f.Dir, "."+s.Name+"-")
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	defer os.RemoveAll(tmp)
	for k, v := range s.Data {
		if err := os.WriteFile(filepath.Join(tmp, k), v, 0o600); err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
	}
	if err := os.Rename(tmp, filepath.Join(f.Dir, s.Name)); err != nil {
		if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
			return nil, apierrors.NewAlreadyExists(secretsResource, s.Name)
		}
		return nil, fmt.Errorf("ca: %w", err)
	}
	return s, nil
}

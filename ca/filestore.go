package ca

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// FileSecrets keeps CA Secrets as directories of files, for `meshd serve
// --ca-dir` and `meshd bootstrap` outside a cluster. It implements
// SecretUpdater with the semantics the rotation relies on:
//
//   - Dir/<name> is a symlink to a version directory Dir/.<name>-<random>;
//     the version directory's name is the Secret's resourceVersion.
//   - Create is create-if-absent (creating the symlink is the lock).
//   - Update writes a new version directory and swaps the symlink with one
//     rename, so a reader sees the old Secret or the new one, never half; it
//     fails with Conflict if the Secret changed since it was read.
//   - Annotations live in the version directory's .annotations.json.
//
// A Dir/<name> that is a plain directory (written by hand, or by an older
// meshd) is read as is; the first Update turns it into the symlinked layout.
type FileSecrets struct{ Dir string }

var secretsResource = schema.GroupResource{Resource: "secrets"}

const annotationsFile = ".annotations.json"

// Get implements SecretClient.
func (f FileSecrets) Get(_ context.Context, name string, _ metav1.GetOptions) (*corev1.Secret, error) {
	link := filepath.Join(f.Dir, name)
	version := "plain"
	if target, err := os.Readlink(link); err == nil {
		version = filepath.Base(target)
	}
	entries, err := os.ReadDir(link)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, apierrors.NewNotFound(secretsResource, name)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: read %s: %w", link, err)
	}
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.Dir, ResourceVersion: version}, Data: map[string][]byte{}}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(link, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("ca: read %s: %w", e.Name(), err)
		}
		if e.Name() == annotationsFile {
			if err := json.Unmarshal(b, &s.Annotations); err != nil {
				return nil, fmt.Errorf("ca: %s/%s: %w", link, annotationsFile, err)
			}
			continue
		}
		s.Data[e.Name()] = b
	}
	return s, nil
}

// Create implements SecretClient.
func (f FileSecrets) Create(_ context.Context, s *corev1.Secret, _ metav1.CreateOptions) (*corev1.Secret, error) {
	version, err := f.writeVersion(s)
	if err != nil {
		return nil, err
	}
	if err := os.Symlink(version, filepath.Join(f.Dir, s.Name)); err != nil {
		os.RemoveAll(filepath.Join(f.Dir, version))
		if errors.Is(err, fs.ErrExist) {
			return nil, apierrors.NewAlreadyExists(secretsResource, s.Name)
		}
		return nil, fmt.Errorf("ca: %w", err)
	}
	out := s.DeepCopy()
	out.ResourceVersion = version
	return out, nil
}

// Update implements SecretUpdater.
func (f FileSecrets) Update(ctx context.Context, s *corev1.Secret, _ metav1.UpdateOptions) (*corev1.Secret, error) {
	cur, err := f.Get(ctx, s.Name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if s.ResourceVersion != cur.ResourceVersion {
		return nil, apierrors.NewConflict(secretsResource, s.Name, fmt.Errorf("changed since read (version %s, now %s)", s.ResourceVersion, cur.ResourceVersion))
	}
	version, err := f.writeVersion(s)
	if err != nil {
		return nil, err
	}
	link := filepath.Join(f.Dir, s.Name)
	old := ""
	if target, err := os.Readlink(link); err == nil {
		old = filepath.Join(f.Dir, filepath.Base(target))
	} else {
		// A plain directory: move it aside first (the one moment a reader
		// finds nothing; the symlinked layout has no such moment).
		old = filepath.Join(f.Dir, "."+s.Name+"-plain")
		if err := os.Rename(link, old); err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
	}
	tmpLink := filepath.Join(f.Dir, "."+version+".link")
	if err := os.Symlink(version, tmpLink); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if err := os.Rename(tmpLink, link); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	os.RemoveAll(old)
	out := s.DeepCopy()
	out.ResourceVersion = version
	return out, nil
}

// writeVersion writes a Secret into a new version directory and returns its
// name.
func (f FileSecrets) writeVersion(s *corev1.Secret) (string, error) {
	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return "", fmt.Errorf("ca: %w", err)
	}
	dir, err := os.MkdirTemp(f.Dir, "."+s.Name+"-")
	if err != nil {
		return "", fmt.Errorf("ca: %w", err)
	}
	fail := func(err error) (string, error) {
		os.RemoveAll(dir)
		return "", fmt.Errorf("ca: %w", err)
	}
	for k, v := range s.Data {
		if k == annotationsFile || strings.ContainsAny(k, `/\`) {
			return fail(fmt.Errorf("secret key %q cannot be a file name", k))
		}
		if err := os.WriteFile(filepath.Join(dir, k), v, 0o600); err != nil {
			return fail(err)
		}
	}
	if len(s.Annotations) > 0 {
		b, _ := json.Marshal(s.Annotations)
		if err := os.WriteFile(filepath.Join(dir, annotationsFile), b, 0o600); err != nil {
			return fail(err)
		}
	}
	return filepath.Base(dir), nil
}

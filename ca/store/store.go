// Package store keeps the CA's material: named records (a map of files by
// key, annotations, and a version for optimistic concurrency) in a
// Kubernetes Secret (Secrets) or in a directory of files (Files, for
// `meshd serve --ca-dir` and `meshd bootstrap` outside a cluster).
//
// Where it sits: under ca/rootca, which decides what a record holds. It
// owns persistence only and knows nothing about certificates: it must not
// import ca or any of its other sub-packages, and Files must not use
// Kubernetes types or errors (a directory is not an API server).
package store

import (
	"context"
	"errors"
	"maps"
)

// Record is one named set of CA material.
//
// Ownership: Get, Create and Update return a new Record each time; the
// caller may mutate it (Clone first to keep the original).
type Record struct {
	Name        string
	Data        map[string][]byte
	Annotations map[string]string
	// Version is set by the store on every read and write; Update refuses a
	// record whose Version is no longer the stored one. Opaque.
	Version string
}

// Clone returns a deep copy of r, with non-nil maps.
func (r *Record) Clone() *Record {
	out := &Record{Name: r.Name, Version: r.Version, Data: make(map[string][]byte, len(r.Data)),
		Annotations: make(map[string]string, len(r.Annotations))}
	for k, v := range r.Data {
		out.Data[k] = append([]byte(nil), v...)
	}
	maps.Copy(out.Annotations, r.Annotations)
	return out
}

// Errors every Store returns (wrapped, with the place): test with errors.Is.
var (
	ErrNotFound = errors.New("store: no such record")
	ErrExists   = errors.New("store: record exists")
	ErrConflict = errors.New("store: record changed since it was read")
)

// Store keeps records. Implementations are safe for concurrent use, also by
// several processes (meshd replicas) sharing one store.
type Store interface {
	// Get returns the record, or an error wrapping ErrNotFound.
	Get(ctx context.Context, name string) (*Record, error)
	// Create stores a new record if none of that name exists (when several
	// writers race, exactly one wins); otherwise it fails with ErrExists.
	Create(ctx context.Context, r *Record) (*Record, error)
	// Update replaces the record as a whole, if r.Version is still the
	// stored version; otherwise it fails with ErrConflict.
	Update(ctx context.Context, r *Record) (*Record, error)
}

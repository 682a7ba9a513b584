package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Files keeps each record as a directory of files, one per data key:
//
//   - Dir/<name> is a symlink to a version directory Dir/.<name>-<random>;
//     the version directory's name is the record's Version.
//   - Create is create-if-absent (creating the symlink is the lock).
//   - Update writes a new version directory and swaps the symlink with one
//     rename, so a reader sees the old record or the new one, never half;
//     it fails with ErrConflict if the record changed since it was read.
//   - Annotations live in the version directory's .annotations.json.
//
// A Dir/<name> that is a plain directory (written by hand, or by an older
// meshd) is read as is; the first Update turns it into the symlinked layout.
type Files struct{ Dir string }

var _ Store = Files{}

const annotationsFile = ".annotations.json"

// Get implements Store.
func (f Files) Get(_ context.Context, name string) (*Record, error) {
	link := filepath.Join(f.Dir, name)
	version := "plain"
	if target, err := os.Readlink(link); err == nil {
		version = filepath.Base(target)
	}
	entries, err := os.ReadDir(link)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", link, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: read %s: %w", link, err)
	}
	r := &Record{Name: name, Version: version, Data: map[string][]byte{}}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(link, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("store: read %s: %w", e.Name(), err)
		}
		if e.Name() == annotationsFile {
			if err := json.Unmarshal(b, &r.Annotations); err != nil {
				return nil, fmt.Errorf("store: %s/%s: %w", link, annotationsFile, err)
			}
			continue
		}
		r.Data[e.Name()] = b
	}
	return r, nil
}

// Create implements Store.
func (f Files) Create(_ context.Context, r *Record) (*Record, error) {
	version, err := f.writeVersion(r)
	if err != nil {
		return nil, err
	}
	link := filepath.Join(f.Dir, r.Name)
	if err := os.Symlink(version, link); err != nil {
		os.RemoveAll(filepath.Join(f.Dir, version))
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%s: %w", link, ErrExists)
		}
		return nil, fmt.Errorf("store: %w", err)
	}
	out := r.Clone()
	out.Version = version
	return out, nil
}

// Update implements Store.
func (f Files) Update(ctx context.Context, r *Record) (*Record, error) {
	cur, err := f.Get(ctx, r.Name)
	if err != nil {
		return nil, err
	}
	link := filepath.Join(f.Dir, r.Name)
	if r.Version != cur.Version {
		return nil, fmt.Errorf("%s (version %s, now %s): %w", link, r.Version, cur.Version, ErrConflict)
	}
	version, err := f.writeVersion(r)
	if err != nil {
		return nil, err
	}
	old := ""
	if target, err := os.Readlink(link); err == nil {
		old = filepath.Join(f.Dir, filepath.Base(target))
	} else {
		// A plain directory: move it aside first (the one moment a reader
		// finds nothing; the symlinked layout has no such moment).
		old = filepath.Join(f.Dir, "."+r.Name+"-plain")
		if err := os.Rename(link, old); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	tmpLink := filepath.Join(f.Dir, "."+version+".link")
	if err := os.Symlink(version, tmpLink); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := os.Rename(tmpLink, link); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	os.RemoveAll(old)
	out := r.Clone()
	out.Version = version
	return out, nil
}

// writeVersion writes a record into a new version directory and returns
// its name.
func (f Files) writeVersion(r *Record) (string, error) {
	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	dir, err := os.MkdirTemp(f.Dir, "."+r.Name+"-")
	if err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	fail := func(err error) (string, error) {
		os.RemoveAll(dir)
		return "", fmt.Errorf("store: %w", err)
	}
	for k, v := range r.Data {
		if k == annotationsFile || strings.ContainsAny(k, `/\`) || k == "" || k == "." || k == ".." {
			return fail(fmt.Errorf("record key %q cannot be a file name", k))
		}
		if err := os.WriteFile(filepath.Join(dir, k), v, 0o600); err != nil {
			return fail(err)
		}
	}
	if len(r.Annotations) > 0 {
		b, err := json.Marshal(r.Annotations)
		if err != nil {
			return fail(err)
		}
		if err := os.WriteFile(filepath.Join(dir, annotationsFile), b, 0o600); err != nil {
			return fail(err)
		}
	}
	return filepath.Base(dir), nil
}

package rootca

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/store"
)

// LoadOrCreate returns the internal root kept in record name. On first
// start it creates a self-signed root with create-if-absent semantics: when
// several replicas race, the one whose Create wins defines the root and the
// others read it back. An existing record that does not hold valid,
// matching material is an error: the root is never silently replaced.
//
// A mesh remembers that it has a root: next to the CA record, a trust
// record (<name>-trust, public data only) holds the trust bundle. A CA
// record that is missing while the trust record exists was deleted: that
// is an error, not a first start, because a new root would silently cut
// every sidecar off.
func LoadOrCreate(ctx context.Context, st store.Store, name, trustDomain string, rand io.Reader, now time.Time) (*ca.Authority, error) {
	r, err := st.Get(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return firstStart(ctx, st, name, trustDomain, rand, now)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: read CA secret %s: %w", name, err)
	}
	return loadAndRecord(ctx, st, r, now)
}

// firstStart: no CA record. Unless the trust record says this mesh had one,
// create the root.
func firstStart(ctx context.Context, st store.Store, name, trustDomain string, rand io.Reader, now time.Time) (*ca.Authority, error) {
	rec, err := st.Get(ctx, TrustRecordName(name))
	if err == nil {
		// A replica starting at the same time may have created both since
		// our first read: the CA record is there now.
		r, err := st.Get(ctx, name)
		if err == nil {
			return loadAndRecord(ctx, st, r, now)
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("ca: read CA secret %s: %w", name, err)
		}
		return nil, fmt.Errorf("ca: the CA secret %s is gone but this mesh trusts a root (recorded in %s, %d bytes of bundle): "+
			"restore %s from a backup; only to start a new mesh root on purpose (every sidecar must then be re-injected), delete %s",
			name, TrustRecordName(name), len(rec.Data[KeyRootCert]), name, TrustRecordName(name))
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("ca: read trust record %s: %w", TrustRecordName(name), err)
	}
	a, err := create(ctx, st, name, trustDomain, rand, now)
	if err != nil {
		return nil, err
	}
	return a, recordTrust(ctx, st, name, a)
}

func loadAndRecord(ctx context.Context, st store.Store, r *store.Record, now time.Time) (*ca.Authority, error) {
	a, err := fromRecord(r, now)
	if err != nil {
		return nil, err
	}
	return a, recordTrust(ctx, st, r.Name, a)
}

// TrustRecordName is the record that keeps a mesh's trust bundle.
func TrustRecordName(caRecord string) string { return caRecord + "-trust" }

// recordTrust creates the trust record if it is missing (a mesh created
// before records existed gets one at its next start).
func recordTrust(ctx context.Context, st store.Store, name string, a *ca.Authority) error {
	rec := &store.Record{Name: TrustRecordName(name), Data: map[string][]byte{KeyRootCert: a.BundlePEM}}
	if _, err := st.Create(ctx, rec); err != nil && !errors.Is(err, store.ErrExists) {
		return fmt.Errorf("ca: create trust record %s: %w", rec.Name, err)
	}
	return nil
}

func create(ctx context.Context, st store.Store, name, trustDomain string, rand io.Reader, now time.Time) (*ca.Authority, error) {
	a, err := ca.NewRoot(rand, now, trustDomain)
	if err != nil {
		return nil, err
	}
	keyPEM, err := ca.EncodeKey(a.Key)
	if err != nil {
		return nil, err
	}
	_, err = st.Create(ctx, &store.Record{Name: name, Data: map[string][]byte{KeyRootCert: a.BundlePEM, KeyCAKey: keyPEM}})
	if errors.Is(err, store.ErrExists) {
		// Another replica won the race: use its root.
		return Load(ctx, st, name, now)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: create CA secret %s: %w", name, err)
	}
	return a, nil
}

// Load reads the CA kept in record name; it never creates one.
func Load(ctx context.Context, st store.Store, name string, now time.Time) (*ca.Authority, error) {
	r, err := st.Get(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("ca: read CA secret %s: %w", name, err)
	}
	return fromRecord(r, now)
}

func fromRecord(r *store.Record, now time.Time) (*ca.Authority, error) {
	a, err := FromData(r.Data, now)
	if err != nil {
		return nil, fmt.Errorf("ca: CA secret %s: %w", r.Name, err)
	}
	return a, nil
}

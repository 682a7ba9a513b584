package podcert

import (
	"context"
	"fmt"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestLifetime(t *testing.T) {
	for name, tc := range map[string]struct {
		certTTL time.Duration
		max     int32
		want    time.Duration // leaf lifetime: TTL plus the back-dating
	}{
		"cert-ttl within bounds":       {90 * time.Minute, 86400, 91 * time.Minute},
		"short cert-ttl raised to 1h":  {5 * time.Minute, 86400, time.Hour},
		"request allows less than ttl": {24 * time.Hour, 3600, time.Hour},
		"request cap below cert-ttl":   {24 * time.Hour, 7200, 2 * time.Hour},
	} {
		t.Run(name, func(t *testing.T) {
			if got := lifetime(tc.certTTL, tc.max, backdate) + backdate; got != tc.want {
				t.Errorf("leaf lifetime %s, want %s", got, tc.want)
			}
		})
	}
}

func TestLongestLifetime(t *testing.T) {
	if got := LongestLifetime(time.Minute); got != time.Hour {
		t.Errorf("--cert-ttl 1m: longest %s, want 1h (the apiserver's minimum)", got)
	}
	if got := LongestLifetime(24 * time.Hour); got != 24*time.Hour+backdate {
		t.Errorf("--cert-ttl 24h: longest %s", got)
	}
}

func TestRefreshAt(t *testing.T) {
	nb := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)
	for name, tc := range map[string]struct {
		life, certTTL time.Duration
		renewAt       float64
		want          time.Duration // after notBefore
	}{
		"half of a day":                         {24 * time.Hour, 24 * time.Hour, 0.5, 12 * time.Hour},
		"one hour: half":                        {time.Hour, time.Hour, 0.5, 30 * time.Minute},
		"raised to 1h, refreshed as --cert-ttl": {time.Hour, 40 * time.Minute, 0.5, 20*time.Minute + 30*time.Second},
		"not before notBefore+10m":              {time.Hour, time.Minute, 0.5, 10 * time.Minute},
		"not later than notAfter-10m":           {time.Hour, time.Hour, 0.95, 50 * time.Minute},
		"request shorter than --cert-ttl":       {2 * time.Hour, 24 * time.Hour, 0.5, time.Hour},
	} {
		t.Run(name, func(t *testing.T) {
			if got := refreshAt(nb, nb.Add(tc.life), tc.certTTL, tc.renewAt).Sub(nb); got != tc.want {
				t.Errorf("refresh after %s, want %s", got, tc.want)
			}
		})
	}
}

// A flood of new requests goes at its own rate; a renewal queued behind it
// is taken first, and a second renewal of the same pod does not jump the
// queue.
func TestQueueRenewalsFirst(t *testing.T) {
	q := newQueue(rate.Inf, rate.Limit(1), 1)
	for i := range 1000 {
		q.add(fmt.Sprintf("ns/flood-%d", i), "")
	}
	q.add("ns/renew-a", "uid-a")
	q.add("ns/renew-a-again", "uid-a")
	q.add("ns/renew-b", "uid-b")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got []string
	for range 3 {
		k, ok := q.get(ctx)
		if !ok {
			t.Fatal("queue closed")
		}
		got = append(got, k)
	}
	if got[0] != "ns/renew-a" || got[1] != "ns/renew-b" || got[2] != "ns/flood-0" {
		t.Errorf("order %v, want the two renewals first, then the flood", got)
	}
	if r, f := q.len(); r != 0 || f != 1000 {
		t.Errorf("left %d renewals and %d others, want 0 and 1000 (the second request of pod a joins the others)", r, f)
	}
	// The flood's class is limited: at 1/s with burst 1 the next one waits.
	if k, wait := q.next(); k != "" || wait <= 0 {
		t.Errorf("next = %q after %s; want none yet", k, wait)
	}
}

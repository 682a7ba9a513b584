package podcert

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// queue holds the requests waiting for an answer in two classes with their
// own rate limits: renewals (a pod meshd has already issued to; at most one
// queued per pod, so a flood for one pod cannot fill this class) and
// everything else. Workers take renewals first, so a flood of new requests
// is limited to its own rate and never delays a renewal. Keys are
// namespace/name; a key queued twice is queued once. Safe for concurrent use.
type queue struct {
	mu           sync.Mutex
	renew, fresh []string
	queued       map[string]string // key -> pod UID of a queued renewal ("" for fresh)
	renewing     map[string]bool   // pod UIDs with a renewal queued
	renewLim     *rate.Limiter
	freshLim     *rate.Limiter
	wake         chan struct{}
}

func newQueue(renewRate, freshRate rate.Limit, burst int) *queue {
	return &queue{queued: map[string]string{}, renewing: map[string]bool{}, wake: make(chan struct{}, 1),
		renewLim: rate.NewLimiter(renewRate, burst), freshLim: rate.NewLimiter(freshRate, burst)}
}

// add queues key; podUID non-empty marks it a renewal of that pod.
func (q *queue) add(key, podUID string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.queued[key]; ok {
		return
	}
	if podUID != "" && !q.renewing[podUID] {
		q.renewing[podUID] = true
		q.queued[key] = podUID
		q.renew = append(q.renew, key)
	} else {
		q.queued[key] = ""
		q.fresh = append(q.fresh, key)
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// addAfter queues key again after d (a retry), unless ctx ends first.
func (q *queue) addAfter(ctx context.Context, key, podUID string, d time.Duration) {
	t := time.AfterFunc(d, func() {
		if ctx.Err() == nil {
			q.add(key, podUID)
		}
	})
	context.AfterFunc(ctx, func() { t.Stop() })
}

// get returns the next key its class's rate allows, waiting as needed;
// false when ctx ends.
func (q *queue) get(ctx context.Context) (string, bool) {
	for {
		key, wait := q.next()
		if key != "" {
			return key, true
		}
		if wait == 0 {
			wait = time.Hour // nothing queued: an add wakes us
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", false
		case <-q.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// next pops a key if its class may go now; otherwise it returns how long
// until one may (0: nothing queued).
func (q *queue) next() (string, time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var wait time.Duration
	for _, c := range []struct {
		list *[]string
		lim  *rate.Limiter
	}{{&q.renew, q.renewLim}, {&q.fresh, q.freshLim}} {
		if len(*c.list) == 0 {
			continue
		}
		r := c.lim.Reserve()
		if d := r.Delay(); d > 0 {
			r.Cancel()
			if wait == 0 || d < wait {
				wait = d
			}
			continue
		}
		key := (*c.list)[0]
		*c.list = (*c.list)[1:]
		if uid := q.queued[key]; uid != "" {
			delete(q.renewing, uid)
		}
		delete(q.queued, key)
		return key, 0
	}
	return "", wait
}

// len reports how many keys wait (renewals, others).
func (q *queue) len() (int, int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.renew), len(q.fresh)
}

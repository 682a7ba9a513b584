package load

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"golang.org/x/time/rate"

	"github.com/meshd/meshd/ca"
)

// Config configures a run.
type Config struct {
	XDSAddr string
	// Issuer mints each sidecar's client certificate (the injector's job).
	Issuer      ca.Issuer
	Bundle      []byte
	TrustDomain string
	Namespace   string
	Sidecars    int
	// Rate is new connections per second (default 500).
	Rate  float64
	Delta bool
	// ScopeOf, if set, is the services sidecar i's pod scopes it to (nil:
	// every service): a change is waited for only at sidecars whose scope
	// has its service.
	ScopeOf func(i int) []string
}

// Fleet is a set of connected sidecars.
type Fleet struct {
	cfg      Config
	sidecars []*sidecar
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	reasons  map[string]int // why streams ended, by error text
	// Figures of Connect.
	CertsPerSecond float64
	TimeToFull     time.Duration
	// ConfigBytes is what a sidecar had received when it first held its
	// full configuration (the mean over those that did): the size of its
	// responses' protobuf encodings, without gRPC's framing or TLS.
	ConfigBytes int64
}

// Connect mints certificates, connects every sidecar at the configured
// rate and waits until each holds its full configuration and secrets.
func Connect(ctx context.Context, cfg Config) (*Fleet, error) {
	if cfg.Rate == 0 {
		cfg.Rate = 500
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(cfg.Bundle) {
		return nil, errors.New("load: empty trust bundle")
	}
	certs := make([]*ca.Certificate, cfg.Sidecars)
	start := time.Now()
	for i := range certs {
		id := ca.Identity{TrustDomain: cfg.TrustDomain, Namespace: cfg.Namespace, ServiceAccount: "load"}
		c, err := cfg.Issuer.Issue(ctx, ca.Request{Identity: id, CommonName: nodeName(i, cfg.Namespace)})
		if err != nil {
			return nil, fmt.Errorf("load: certificate %d: %w", i, err)
		}
		certs[i] = c
	}
	f := &Fleet{cfg: cfg, CertsPerSecond: float64(len(certs)) / time.Since(start).Seconds(), reasons: map[string]int{}}
	sh := newShared()
	runCtx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	limiter := rate.NewLimiter(rate.Limit(cfg.Rate), 1)
	start = time.Now()
	for i, c := range certs {
		if err := limiter.Wait(ctx); err != nil {
			f.Close()
			return nil, err
		}
		conn, err := dial(cfg.XDSAddr, c, roots)
		if err != nil {
			f.Close()
			return nil, err
		}
		s := newSidecar(nodeName(i, cfg.Namespace), cfg.Delta, conn, sh)
		if cfg.ScopeOf != nil {
			if svcs := cfg.ScopeOf(i); svcs != nil {
				s.scope = map[string]bool{}
				for _, svc := range svcs {
					s.scope[fmt.Sprintf("outbound|80|%s.%s", svc, cfg.Namespace)] = true
				}
			}
		}
		f.sidecars = append(f.sidecars, s)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			err := s.run(runCtx) // never nil: a stream ends with its reason
			close(s.ended)
			if runCtx.Err() == nil {
				f.mu.Lock()
				f.reasons[addrs.ReplaceAllString(err.Error(), "<addr>")]++
				f.mu.Unlock()
			}
		}()
	}
	// Every sidecar complete, or its stream ended (a dropped stream is
	// counted, not waited for: Envoy would reconnect, this tool does not).
	full := int64(0)
	for _, s := range f.sidecars {
		select {
		case <-s.complete:
			f.ConfigBytes += s.configBytes
			full++
		case <-s.ended:
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("load: not every sidecar got its config: %w", ctx.Err())
		}
	}
	f.TimeToFull = time.Since(start)
	if full > 0 {
		f.ConfigBytes /= full
	}
	return f, nil
}

// addrs are the addresses in a stream's error: reasons are counted
// without them.
var addrs = regexp.MustCompile(`\d+\.\d+\.\d+\.\d+:\d+`)

func nodeName(i int, ns string) string { return "load-" + strconv.Itoa(i) + "." + ns }

// Dropped counts streams that ended while the fleet was up.
func (f *Fleet) Dropped() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	for _, c := range f.reasons {
		n += int64(c)
	}
	return n
}

// DropReasons are the errors dropped streams ended with, with counts.
func (f *Fleet) DropReasons() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.reasons)
}

// live returns the sidecars whose stream is up.
func (f *Fleet) live() []*sidecar {
	var out []*sidecar
	for _, s := range f.sidecars {
		select {
		case <-s.ended:
		default:
			out = append(out, s)
		}
	}
	return out
}

// Close ends every stream.
func (f *Fleet) Close() {
	f.cancel()
	for _, s := range f.sidecars {
		s.conn.Close()
	}
	f.wg.Wait()
}

// Convergence measures one endpoint change: write performs it and returns
// the cluster name and address to look for; the result is, per sidecar,
// the time from write's return to the first response holding the change.
func (f *Fleet) Convergence(ctx context.Context, write func() (cluster, addr string, err error)) ([]time.Duration, error) {
	var mu sync.Mutex
	var t0 time.Time
	seen := map[*sidecar]time.Duration{}
	var target, addrWanted string
	all := make(chan struct{})
	live := f.live()
	want := 0 // the live sidecars whose scope has the target, once known
	for _, s := range live {
		s.mu.Lock()
		s.watch = func(cla *endpointv3.ClusterLoadAssignment, at time.Time) {
			mu.Lock()
			defer mu.Unlock()
			if t0.IsZero() || cla.GetClusterName() != target || !hasAddr(cla, addrWanted) || s.scope != nil && !s.scope[target] {
				return
			}
			if _, ok := seen[s]; !ok {
				seen[s] = max(at.Sub(t0), 0)
				if len(seen) == want {
					close(all)
				}
			}
		}
		s.mu.Unlock()
	}
	defer func() {
		for _, s := range f.sidecars {
			s.mu.Lock()
			s.watch = nil
			s.mu.Unlock()
		}
	}()
	mu.Lock()
	cluster, addr, err := write()
	target, addrWanted, t0 = cluster, addr, time.Now()
	for _, s := range live {
		if s.scope == nil || s.scope[cluster] {
			want++
		}
	}
	if want == 0 {
		close(all)
	}
	mu.Unlock()
	if err != nil {
		return nil, err
	}
	select {
	case <-all:
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		return nil, fmt.Errorf("load: %d of %d sidecars saw the change: %w", len(seen), want, ctx.Err())
	}
	out := make([]time.Duration, 0, len(seen))
	for _, d := range seen {
		out = append(out, d)
	}
	slices.Sort(out)
	return out, nil
}

func hasAddr(cla *endpointv3.ClusterLoadAssignment, addr string) bool {
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			if e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress() == addr {
				return true
			}
		}
	}
	return false
}

// Percentile of sorted durations (p in 0..100).
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

// Proc reads a process's resident memory and CPU time from /proc.
func Proc(pid int) (rssBytes int64, cpu time.Duration, err error) {
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			rssBytes = kb * 1024
		}
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command name (which may hold spaces): utime is 14th
	// and stime 15th of the whole line.
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+2:])
	f := strings.Fields(rest)
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return rssBytes, time.Duration(utime+stime) * (time.Second / 100), nil
}

// Clusters is, per sidecar, how many EDS clusters it holds.
func (f *Fleet) Clusters() []int {
	out := make([]int, 0, len(f.sidecars))
	for _, s := range f.sidecars {
		s.mu.Lock()
		out = append(out, s.clusters.count())
		s.mu.Unlock()
	}
	return out
}

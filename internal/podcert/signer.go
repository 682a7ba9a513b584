package podcert

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
	certsv1beta1 "k8s.io/api/certificates/v1beta1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/meshd/meshd/ca"
)

// Config configures a Signer.
type Config struct {
	Client kubernetes.Interface
	// Issuer signs; it must certify a bare public key (the internal CA does;
	// cert-manager cannot, it needs a CSR signed by the private key).
	Issuer      ca.Issuer
	TrustDomain string
	// SignerName defaults to DefaultSignerName.
	SignerName string
	// CertTTL is meshd's certificate lifetime (--cert-ttl); issued
	// certificates live that long, but at least an hour (the apiserver's
	// minimum) and at most what the request allows.
	CertTTL time.Duration
	// MaxLifetime is the largest maxExpirationSeconds meshd accepts (default
	// 24h, the apiserver's default); a request asking more is denied.
	MaxLifetime time.Duration
	// RenewAt is the fraction of CertTTL (or of the lifetime, if shorter)
	// after which the kubelet is told to refresh (default 0.5, as meshd
	// renews its own certificates); never sooner than 10 minutes after
	// notBefore, the apiserver's minimum.
	RenewAt float64
	// Rate and Burst limit answers to new requests per second (default 20,
	// burst 50); renewals have a limit of their own, twice that.
	Rate  float64
	Burst int
	// Workers answer requests concurrently (default 2).
	Workers int
	// NodeID names the xDS node of a pod's sidecar; it becomes the Subject
	// CommonName, so the certificate authenticates that pod's xDS stream.
	NodeID func(namespace, pod string) string
	Logger *slog.Logger
	// Clock dates conditions and tells which issued certificates are
	// still valid (default: the real clock).
	Clock clock.PassiveClock
	// OnAnswer (optional) hears every answer: the condition type and reason.
	OnAnswer func(condition, reason string)
}

// Signer answers PodCertificateRequests for its signer name. Run it on one
// replica at a time (the leader); its answers are idempotent anyway: a
// request that already carries an answer is never answered again, and the
// apiserver refuses a second answer.
type Signer struct {
	cfg    Config
	q      *queue
	lister cache.Indexer
	mu     sync.Mutex
	// issued remembers, per pod UID, until when meshd's last certificate
	// for it is valid: the next request of that pod is a renewal.
	issued   map[string]time.Time
	pruneAt  int
	attempts map[string]int
}

// backdate is how far the CA dates notBefore back (ca.leafTemplate).
const backdate = time.Minute

// byPodUID indexes requests by the pod they are for.
const byPodUID = "podUID"

// New returns a Signer.
func New(cfg Config) (*Signer, error) {
	if cfg.Client == nil || cfg.Issuer == nil || cfg.TrustDomain == "" || cfg.NodeID == nil {
		return nil, errors.New("podcert: Client, Issuer, TrustDomain and NodeID are required")
	}
	if cfg.SignerName == "" {
		cfg.SignerName = DefaultSignerName
	}
	if cfg.CertTTL == 0 {
		cfg.CertTTL = 24 * time.Hour
	}
	if cfg.MaxLifetime == 0 {
		cfg.MaxLifetime = 24 * time.Hour
	}
	if cfg.RenewAt == 0 {
		cfg.RenewAt = 0.5
	}
	if cfg.Rate == 0 {
		cfg.Rate = 20
	}
	if cfg.Burst == 0 {
		cfg.Burst = 50
	}
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Signer{cfg: cfg, q: newQueue(rate.Limit(2*cfg.Rate), rate.Limit(cfg.Rate), cfg.Burst),
		issued: map[string]time.Time{}, attempts: map[string]int{}}, nil
}

// Start watches the signer's requests and answers them until ctx ends.
func (s *Signer) Start(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(s.cfg.Client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.signerName", s.cfg.SignerName).String()
	}))
	inf := factory.Certificates().V1beta1().PodCertificateRequests().Informer()
	if err := inf.AddIndexers(cache.Indexers{byPodUID: func(obj any) ([]string, error) {
		if r, ok := obj.(*certsv1beta1.PodCertificateRequest); ok {
			return []string{string(r.Spec.PodUID)}, nil
		}
		return nil, nil
	}}); err != nil {
		return fmt.Errorf("podcert: %w", err)
	}
	s.lister = inf.GetIndexer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    s.enqueue,
		UpdateFunc: func(_, obj any) { s.enqueue(obj) },
	}); err != nil {
		return fmt.Errorf("podcert: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return ctx.Err()
	}
	s.cfg.Logger.Info("podcert: signer answering PodCertificateRequests", "signer", s.cfg.SignerName)
	var wg sync.WaitGroup
	for range s.cfg.Workers {
		wg.Go(func() {
			for {
				key, ok := s.q.get(ctx)
				if !ok {
					return
				}
				s.process(ctx, key)
			}
		})
	}
	wg.Wait()
	return nil
}

// enqueue queues an unanswered request of this signer; a request for a pod
// meshd has already issued to goes in the renewal class.
func (s *Signer) enqueue(obj any) {
	r, ok := obj.(*certsv1beta1.PodCertificateRequest)
	if !ok || r.Spec.SignerName != s.cfg.SignerName || terminal(r) {
		return
	}
	uid := ""
	if s.renewal(r) {
		uid = string(r.Spec.PodUID)
	}
	s.q.add(r.Namespace+"/"+r.Name, uid)
}

// renewal reports whether meshd has issued to the request's pod before: in
// this process, or (after a restart) as another request still stored.
func (s *Signer) renewal(r *certsv1beta1.PodCertificateRequest) bool {
	uid := string(r.Spec.PodUID)
	s.mu.Lock()
	until, ok := s.issued[uid]
	s.mu.Unlock()
	if ok && s.cfg.Clock.Now().Before(until) {
		return true
	}
	others, _ := s.lister.ByIndex(byPodUID, uid)
	for _, o := range others {
		if other, ok := o.(*certsv1beta1.PodCertificateRequest); ok && other.Name != r.Name && issued(other) {
			return true
		}
	}
	return false
}

func issued(r *certsv1beta1.PodCertificateRequest) bool {
	for _, c := range r.Status.Conditions {
		if c.Type == certsv1beta1.PodCertificateRequestConditionTypeIssued {
			return true
		}
	}
	return false
}

// process answers one request, retrying with backoff on errors that are
// not the request's fault.
func (s *Signer) process(ctx context.Context, key string) {
	obj, ok, err := s.lister.GetByKey(key)
	if err != nil || !ok {
		return // deleted
	}
	r := obj.(*certsv1beta1.PodCertificateRequest)
	if terminal(r) {
		return
	}
	s.mu.Lock()
	n := s.attempts[key]
	s.mu.Unlock()
	err = s.answer(ctx, r, n)
	s.mu.Lock()
	if err == nil {
		delete(s.attempts, key)
	} else {
		s.attempts[key] = n + 1
	}
	s.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		backoff := min(time.Second<<min(n, 6), time.Minute)
		s.cfg.Logger.Warn("podcert: request not answered yet; retrying", "request", key, "retry_in", backoff, "error", err)
		s.q.addAfter(ctx, key, "", backoff)
	}
}

// failAfter is how many times issuance is tried before the request is
// marked Failed: the kubelet does not retry a failed request (the pod
// would not start), so a passing CA problem must not end it.
const failAfter = 5

// answer decides and writes the answer; attempt counts earlier tries.
// Errors mean "try again later".
func (s *Signer) answer(ctx context.Context, r *certsv1beta1.PodCertificateRequest, attempt int) error {
	pod, err := s.cfg.Client.CoreV1().Pods(r.Namespace).Get(ctx, r.Spec.PodName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		pod, err = nil, nil
	}
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", r.Namespace, r.Spec.PodName, err)
	}
	out := r.DeepCopy()
	if v := s.check(r, pod); v != nil {
		setCondition(out, certsv1beta1.PodCertificateRequestConditionTypeDenied, v, s.cfg.Clock.Now())
		return s.write(ctx, out, v)
	}
	pub, _ := checkRequest(r, s.cfg.MaxLifetime)
	ttl := lifetime(s.cfg.CertTTL, *r.Spec.MaxExpirationSeconds, backdate)
	id := ca.Identity{TrustDomain: s.cfg.TrustDomain, Namespace: r.Namespace, ServiceAccount: r.Spec.ServiceAccountName}
	c, err := s.cfg.Issuer.Issue(ctx, ca.Request{Identity: id, PublicKey: pub, TTL: ttl, PodUID: string(r.Spec.PodUID),
		CommonName: s.cfg.NodeID(r.Namespace, r.Spec.PodName), Pod: r.Namespace + "/" + r.Spec.PodName})
	if err != nil && attempt+1 < failAfter {
		return err
	}
	if err != nil {
		v := deny(ReasonIssueFailed, "meshd's CA could not issue for %s after %d tries: %v", id, failAfter, err)
		setCondition(out, certsv1beta1.PodCertificateRequestConditionTypeFailed, v, s.cfg.Clock.Now())
		return s.write(ctx, out, v)
	}
	nb, na := c.Leaf.NotBefore, c.Leaf.NotAfter
	out.Status.CertificateChain = string(c.ChainPEM)
	out.Status.NotBefore, out.Status.NotAfter = &metav1.Time{Time: nb}, &metav1.Time{Time: na}
	out.Status.BeginRefreshAt = &metav1.Time{Time: refreshAt(nb, na, s.cfg.CertTTL, s.cfg.RenewAt)}
	ok := &verdict{Reason: ReasonIssued, Message: fmt.Sprintf("issued %s, serial %s, valid until %s", id, c.Leaf.SerialNumber.Text(16), na.UTC().Format(time.RFC3339))}
	setCondition(out, certsv1beta1.PodCertificateRequestConditionTypeIssued, ok, s.cfg.Clock.Now())
	if err := s.write(ctx, out, ok); err != nil {
		return err
	}
	s.mu.Lock()
	s.issued[string(r.Spec.PodUID)] = na
	s.prune()
	s.mu.Unlock()
	return nil
}

// check runs every check; nil means issue.
func (s *Signer) check(r *certsv1beta1.PodCertificateRequest, pod *corev1.Pod) *verdict {
	if v := checkPod(r, pod); v != nil {
		return v
	}
	_, v := checkRequest(r, s.cfg.MaxLifetime)
	return v
}

// write stores the answer. A conflict means the request changed under us:
// if someone answered it meanwhile, that answer stands.
func (s *Signer) write(ctx context.Context, out *certsv1beta1.PodCertificateRequest, v *verdict) error {
	key := out.Namespace + "/" + out.Name
	_, err := s.cfg.Client.CertificatesV1beta1().PodCertificateRequests(out.Namespace).UpdateStatus(ctx, out, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if apierrors.IsConflict(err) {
		cur, gerr := s.cfg.Client.CertificatesV1beta1().PodCertificateRequests(out.Namespace).Get(ctx, out.Name, metav1.GetOptions{})
		if gerr == nil && terminal(cur) {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("podcert: answer %s: %w", key, err)
	}
	cond := out.Status.Conditions[len(out.Status.Conditions)-1].Type
	if s.cfg.OnAnswer != nil {
		s.cfg.OnAnswer(cond, v.Reason)
	}
	level := slog.LevelInfo
	if cond != certsv1beta1.PodCertificateRequestConditionTypeIssued {
		level = slog.LevelWarn
	}
	s.cfg.Logger.Log(ctx, level, "podcert: request answered", "request", key, "pod", out.Namespace+"/"+out.Spec.PodName,
		"condition", cond, "reason", v.Reason, "message", v.Message)
	return nil
}

// prune forgets pods whose last certificate has expired, each time the
// map has doubled (so its cost is amortised). Call with mu held.
func (s *Signer) prune() {
	if len(s.issued) < s.pruneAt {
		return
	}
	defer func() { s.pruneAt = max(2*len(s.issued), 1024) }()
	now := s.cfg.Clock.Now()
	for uid, until := range s.issued {
		if now.After(until) {
			delete(s.issued, uid)
		}
	}
}

func setCondition(r *certsv1beta1.PodCertificateRequest, typ string, v *verdict, now time.Time) {
	r.Status.Conditions = append(r.Status.Conditions, metav1.Condition{Type: typ, Status: metav1.ConditionTrue,
		Reason: v.Reason, Message: v.Message, LastTransitionTime: metav1.NewTime(now), ObservedGeneration: r.Generation})
}

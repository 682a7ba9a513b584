package testenv

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Address ranges of the test cluster. Everything lives in 198.18.0.0/15, a
// range reserved for benchmarking networks; no other addresses are used.
const (
	ServiceCIDR = "198.19.0.0/16"
	PodCIDR     = "198.18.0.0/16"
)

// Env is a running etcd + kube-apiserver on 127.0.0.1, shared by the tests of
// one test binary. It is stopped by Main after all tests ran.
type Env struct {
	// Client is an admin (system:masters) clientset.
	Client kubernetes.Interface
	// Config is the admin REST config; copy it before changing it.
	Config *rest.Config
	// Kubeconfig is the path of an admin kubeconfig file.
	Kubeconfig string
	// URL is the apiserver's https URL.
	URL string
	// Dir holds PKI, data and logs of this environment.
	Dir string
	// CAFile is the PEM of the CA that signed the apiserver's certificates,
	// including the client certificate it presents to admission webhooks
	// (CommonName WebhookClientName).
	CAFile string
	// WebhookCertFile and WebhookKeyFile are that client certificate and
	// its key (a test plays the apiserver, or one who stole its identity).
	WebhookCertFile, WebhookKeyFile string

	pki   *testPKI
	mu    sync.Mutex
	procs []*process // in start order; stopped in reverse
	// what a restart needs (fault tests)
	etcdProc, apiProc *process
	etcdArgs, apiArgs []string
	etcdURL           string
	extraAPI          []string // flags Options added
	kcm               *process
	cm                *process
}

var (
	shared      = map[string]*sharedEnv{} // by the apiserver flags options add
	sharedMu    sync.Mutex
	mainUsed    bool
	defaultOpts []Option // Main's options: what Kube starts
)

type sharedEnv struct {
	env *Env
	err error
}

// Option changes the apiserver: it adds flags.
type Option func(args *[]string)

// WithPodCertificates serves certificates.k8s.io/v1beta1 PodCertificateRequest
// and ClusterTrustBundle (feature gates and runtime config), as the real
// node's cluster does. Without it the apiserver does not serve them, like a
// cluster without the feature.
func WithPodCertificates() Option {
	return func(args *[]string) {
		*args = append(*args, "--feature-gates", "PodCertificateRequest=true,ClusterTrustBundle=true",
			"--runtime-config", "certificates.k8s.io/v1beta1=true")
	}
}

// Main runs the tests of a package that uses Kube and stops what they
// started, in reverse order, also on SIGINT/SIGTERM. Use it as
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }
func Main(m *testing.M, opts ...Option) int {
	mainUsed = true
	defaultOpts = opts
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		if _, ok := <-sigs; ok {
			stopShared()
			os.Exit(2)
		}
	}()
	code := m.Run()
	signal.Stop(sigs)
	close(sigs)
	stopShared()
	return code
}

func stopShared() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	for key, s := range shared {
		if s.env != nil {
			s.env.stop()
			if os.Getenv("MESHD_TESTENV_KEEP") == "" {
				_ = os.RemoveAll(s.env.Dir)
			}
		}
		delete(shared, key)
	}
}

// Kube returns the test binary's etcd + kube-apiserver (with Main's
// options), starting them on the first call. The package must run its
// tests through Main.
func Kube(t testing.TB) *Env {
	t.Helper()
	return KubeWith(t, defaultOpts...)
}

// KubeWith is Kube for an apiserver with other options: each distinct set
// is started once per test binary (a second etcd + apiserver), shared by the
// tests that ask for it.
func KubeWith(t testing.TB, opts ...Option) *Env {
	t.Helper()
	if !mainUsed {
		t.Fatal("testenv.Kube needs `func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }` in the test package")
	}
	for _, tool := range []string{"etcd", "kube-apiserver"} {
		Need(t, tool)
	}
	var extra []string
	for _, o := range opts {
		o(&extra)
	}
	key := strings.Join(extra, " ")
	sharedMu.Lock()
	defer sharedMu.Unlock()
	s := shared[key]
	if s == nil {
		s = &sharedEnv{}
		s.env, s.err = startEnv(extra)
		shared[key] = s
	}
	if s.err != nil {
		t.Fatalf("start kube-apiserver: %v", s.err)
	}
	return s.env
}

func startEnv(extra []string) (*Env, error) {
	dir, err := os.MkdirTemp("", "meshd-testenv-")
	if err != nil {
		return nil, err
	}
	e := &Env{Dir: dir, extraAPI: extra}
	if e.pki, err = newTestPKI(dir); err != nil {
		return nil, err
	}
	e.CAFile = e.pki.caCert
	e.WebhookCertFile, e.WebhookKeyFile = e.pki.hookCert, e.pki.hookKey
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	etcdURL, err := e.startEtcd(ctx)
	if err == nil {
		err = e.startAPIServer(ctx, etcdURL)
	}
	if err != nil {
		e.stop()
		return nil, err
	}
	return e, nil
}

func (e *Env) track(p *process) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.procs = append(e.procs, p)
}

// stop ends every process in reverse start order, the apiserver before
// etcd (also after a restart changed the order).
func (e *Env) stop() {
	e.mu.Lock()
	procs := e.procs
	e.procs = nil
	api := e.apiProc
	e.mu.Unlock()
	if api != nil {
		api.stop(10 * time.Second)
	}
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop(10 * time.Second)
	}
}

func (e *Env) startEtcd(ctx context.Context) (string, error) {
	bin, err := ToolPath("etcd")
	if err != nil {
		return "", err
	}
	clientPort, err := FreePort()
	if err != nil {
		return "", err
	}
	peerPort, err := FreePort()
	if err != nil {
		return "", err
	}
	url := "http://127.0.0.1:" + strconv.Itoa(clientPort)
	e.etcdURL = url
	e.etcdArgs = []string{"--data-dir", filepath.Join(e.Dir, "etcd"),
		"--listen-client-urls", url, "--advertise-client-urls", url,
		"--listen-peer-urls", "http://127.0.0.1:" + strconv.Itoa(peerPort),
		"--initial-advertise-peer-urls", "http://127.0.0.1:" + strconv.Itoa(peerPort),
		"--initial-cluster", "default=http://127.0.0.1:" + strconv.Itoa(peerPort),
		"--unsafe-no-fsync", "--log-level", "warn", "--quota-backend-bytes", strconv.Itoa(4 << 30)}
	return url, e.runEtcd(ctx, bin)
}

func (e *Env) runEtcd(ctx context.Context, bin string) error {
	p, err := startProcess("etcd", e.Dir, nil, bin, e.etcdArgs...)
	if err != nil {
		return err
	}
	e.track(p)
	e.etcdProc = p
	return p.waitFor(ctx, "etcd health", httpOK(e.etcdURL+"/health", nil))
}

func (e *Env) startAPIServer(ctx context.Context, etcdURL string) error {
	bin, err := ToolPath("kube-apiserver")
	if err != nil {
		return err
	}
	port, err := FreePort()
	if err != nil {
		return err
	}
	e.URL = "https://127.0.0.1:" + strconv.Itoa(port)
	pk := e.pki
	e.apiArgs = []string{"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", strconv.Itoa(port),
		"--cert-dir", filepath.Join(e.Dir, "apiserver-certs"),
		"--tls-cert-file", pk.serverCert, "--tls-private-key-file", pk.serverKey,
		"--client-ca-file", pk.caCert,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", pk.saPub, "--service-account-signing-key-file", pk.saKey,
		"--service-cluster-ip-range", ServiceCIDR,
		"--authorization-mode", "RBAC", "--endpoint-reconciler-type", "none",
		"--allow-privileged=true", "--disable-admission-plugins", "ServiceAccount",
		"--admission-control-config-file", pk.admissionConfig,
		"--enable-priority-and-fairness=false", "--v", "1"}
	e.apiArgs = append(e.apiArgs, e.extraAPI...)
	if err := e.writeKubeconfig(); err != nil {
		return err
	}
	return e.runAPIServer(ctx, bin)
}

func (e *Env) runAPIServer(ctx context.Context, bin string) error {
	p, err := startProcess("kube-apiserver", e.Dir, nil, bin, e.apiArgs...)
	if err != nil {
		return err
	}
	e.track(p)
	e.apiProc = p
	if err := p.waitFor(ctx, "apiserver /readyz", httpOK(e.URL+"/readyz", e.adminHTTPClient())); err != nil {
		return err
	}
	// The apiserver makes its own default/kubernetes Service in the
	// background, tens of milliseconds after it is ready or seconds on a
	// busy machine: a watcher a test starts meanwhile would see a Service
	// arrive that the test did not make (the likely cause of one failure
	// of TestWatcherAgainstAPIServer in CI: "the services were listed again
	// though none changed").
	return p.waitFor(ctx, "the apiserver's default/kubernetes Service",
		httpOK(e.URL+"/api/v1/namespaces/default/services/kubernetes", e.adminHTTPClient()))
}

// untrack forgets a process stopped on purpose.
func (e *Env) untrack(p *process) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, q := range e.procs {
		if q == p {
			e.procs = append(e.procs[:i], e.procs[i+1:]...)
			return
		}
	}
}

// RestartAPIServer stops kube-apiserver (SIGTERM), keeps it down for down,
// and starts it again on the same address, waiting until it is ready. Every
// test of the binary sees the outage: for fault tests only.
func (e *Env) RestartAPIServer(ctx context.Context, down time.Duration) error {
	bin, err := ToolPath("kube-apiserver")
	if err != nil {
		return err
	}
	e.apiProc.stop(10 * time.Second)
	e.untrack(e.apiProc)
	time.Sleep(down)
	return e.runAPIServer(ctx, bin)
}

// RestartEtcd does the same with etcd (its data kept); the apiserver
// reconnects by itself.
func (e *Env) RestartEtcd(ctx context.Context, down time.Duration) error {
	bin, err := ToolPath("etcd")
	if err != nil {
		return err
	}
	e.etcdProc.stop(10 * time.Second)
	e.untrack(e.etcdProc)
	time.Sleep(down)
	if err := e.runEtcd(ctx, bin); err != nil {
		return err
	}
	return e.apiProc.waitFor(ctx, "apiserver /readyz after etcd restart", httpOK(e.URL+"/readyz", e.adminHTTPClient()))
}

func (e *Env) writeKubeconfig() error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["testenv"] = &clientcmdapi.Cluster{Server: e.URL, CertificateAuthorityData: e.pki.caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: e.pki.adminPEM, ClientKeyData: e.pki.adminKeyPEM}
	cfg.Contexts["testenv"] = &clientcmdapi.Context{Cluster: "testenv", AuthInfo: "admin"}
	cfg.CurrentContext = "testenv"
	e.Kubeconfig = filepath.Join(e.Dir, "admin.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, e.Kubeconfig); err != nil {
		return fmt.Errorf("testenv: kubeconfig: %w", err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", e.Kubeconfig)
	if err != nil {
		return fmt.Errorf("testenv: kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = 500, 1000
	e.Config = rc
	e.Client, err = kubernetes.NewForConfig(rc)
	return err
}

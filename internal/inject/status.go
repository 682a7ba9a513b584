package inject

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshd/meshd/internal/debug"
)

// StatusConfig says where the injection webhook is configured and how its
// callers are checked.
type StatusConfig struct {
	Client kubernetes.Interface
	// WebhookName is the MutatingWebhookConfiguration.
	WebhookName string
	// Namespace is meshd's: the webhook serves meshd.<Namespace>.svc.
	Namespace string
	// ClientCA and ClientName are --webhook-client-ca and
	// --webhook-client-name ("" when callers are not checked).
	ClientCA, ClientName string
}

// WebhookStatus checks the injection webhook as the apiserver would use it:
// its configuration's caBundle is the current bundle, and a TLS handshake to
// addr verifies with that bundle for the Service name meshd serves.
func WebhookStatus(ctx context.Context, cfg StatusConfig, bundle []byte, addr string) debug.WebhookView {
	v := debug.WebhookView{Enabled: true, Address: addr, Configuration: cfg.WebhookName}
	if cfg.ClientCA != "" {
		v.Callers = cmp.Or(cfg.ClientName, "any certificate of --webhook-client-ca")
	}
	var problems []string
	mwc, err := cfg.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, cfg.WebhookName, metav1.GetOptions{})
	switch {
	case err != nil:
		problems = append(problems, fmt.Sprintf("configuration %s: %v", cfg.WebhookName, err))
	case len(mwc.Webhooks) == 0:
		problems = append(problems, fmt.Sprintf("configuration %s has no webhooks", cfg.WebhookName))
	default:
		v.CABundleCurrent = true
		for _, w := range mwc.Webhooks {
			if !bytes.Equal(w.ClientConfig.CABundle, bundle) {
				v.CABundleCurrent = false
				problems = append(problems, fmt.Sprintf("webhook %s: caBundle is not the mesh's current bundle", w.Name))
			}
		}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(bundle)
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	d := tls.Dialer{Config: &tls.Config{RootCAs: pool, ServerName: "meshd." + cfg.Namespace + ".svc", MinVersion: tls.VersionTLS12}}
	if conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, port)); err != nil {
		problems = append(problems, fmt.Sprintf("TLS to %s: %v", addr, err))
	} else {
		v.Reachable = true
		conn.Close()
	}
	v.Problem = strings.Join(problems, "; ")
	return v
}

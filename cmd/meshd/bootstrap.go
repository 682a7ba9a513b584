package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/xds"
)

// bootstrapCmd renders one sidecar's bootstrap and credentials into a
// directory: what the injector puts into the pod's Secret, for debugging and
// for running a sidecar by hand. It reads the CA from --ca-dir.
func bootstrapCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bootstrap", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var bc bootstrap.Config
	var caDir, caSecret, trustDomain, meshdNS, api, out string
	var ttl time.Duration
	fs.StringVar(&bc.Namespace, "namespace", "", "the pod's namespace")
	fs.StringVar(&bc.Pod, "pod", "", "the pod's name")
	fs.StringVar(&bc.ServiceAccount, "service-account", "default", "the pod's service account")
	fs.StringVar(&bc.PodUID, "pod-uid", "", "the pod's UID")
	fs.StringVar(&bc.XDSAddress, "xds-addr", "127.0.0.1:15012", "meshd's xDS address as the sidecar reaches it")
	fs.StringVar(&api, "api", string(bootstrap.Delta), "ADS flavour: delta or sotw")
	fs.StringVar(&bc.CredsDir, "creds-dir", "", "where the credential files are inside the sidecar (default: --out)")
	fs.StringVar(&caDir, "ca-dir", "", "the CA directory meshd serve uses (--ca-dir)")
	fs.StringVar(&caSecret, "ca-secret", "meshd-ca", "name of the CA within --ca-dir")
	fs.StringVar(&trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain")
	fs.StringVar(&meshdNS, "meshd-namespace", "meshd-system", "meshd's namespace (its SPIFFE ID)")
	fs.StringVar(&out, "out", "", "output directory")
	fs.DurationVar(&ttl, "cert-ttl", 24*time.Hour, "lifetime of the xDS client certificate")
	var adminPort uint
	fs.UintVar(&adminPort, "admin-port", 15000, "Envoy admin port on 127.0.0.1")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if out == "" || caDir == "" {
		return fmt.Errorf("bootstrap: --out and --ca-dir are required")
	}
	out, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	if bc.CredsDir == "" {
		bc.CredsDir = out
	}
	bc.API, bc.AdminPort = bootstrap.APIType(api), uint32(adminPort)
	bc.XDSServerSAN = ca.Identity{TrustDomain: trustDomain, Namespace: meshdNS, ServiceAccount: "meshd"}.String()
	b, err := bootstrap.Render(bc)
	if err != nil {
		return err
	}
	root, err := ca.LoadRoot(ctx, ca.FileSecrets{Dir: caDir}, caSecret, time.Now())
	if err != nil {
		return err
	}
	issuer, err := ca.NewInternal(ca.InternalConfig{Authority: root})
	if err != nil {
		return err
	}
	id := ca.Identity{TrustDomain: trustDomain, Namespace: bc.Namespace, ServiceAccount: bc.ServiceAccount}
	cert, err := issuer.Issue(ctx, ca.Request{Identity: id, TTL: ttl, CommonName: xds.NodeID(bc.Namespace, bc.Pod), Pod: bc.Namespace + "/" + bc.Pod})
	if err != nil {
		return err
	}
	files, err := bootstrap.Files(b, bc.CredsDir, cert.ChainPEM, cert.KeyPEM, cert.BundlePEM)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return err
	}
	for name, data := range files {
		if err := writeAtomic(filepath.Join(out, name), data); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "wrote %s/bootstrap.yaml for %s (node %s, client certificate serial %s, expires %s)\n",
		out, id, xds.NodeID(bc.Namespace, bc.Pod), cert.Leaf.SerialNumber.Text(16), cert.Leaf.NotAfter.Format(time.RFC3339))
	return nil
}

// writeAtomic replaces a file in one rename, as a Secret volume update would.
func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

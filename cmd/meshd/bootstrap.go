package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/ca/store"
	"github.com/meshd/meshd/xds"
)

func newBootstrapCmd() *cobra.Command {
	var f bootstrapFlags
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Render a sidecar's Envoy bootstrap and credentials",
		Long: `Render one sidecar's Envoy bootstrap and credentials into a directory:
what the injector puts into the pod's Secret, for debugging and for running a
sidecar by hand. The CA is read from --ca-dir.`,
		Example: `  meshd bootstrap --ca-dir /tmp/meshd-ca -n demo --pod web-0 --service-account web \
    --xds-addr 127.0.0.1:15012 --out /tmp/web-0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return bootstrapCmd(cmd.Context(), f, cmd.OutOrStdout()) },
	}
	fs := cmd.Flags()
	fs.StringVarP(&f.bc.Namespace, "namespace", "n", "", "the pod's namespace")
	fs.StringVar(&f.bc.Pod, "pod", "", "the pod's name")
	fs.StringVar(&f.bc.ServiceAccount, "service-account", "default", "the pod's service account")
	fs.StringVar(&f.bc.PodUID, "pod-uid", "", "the pod's UID")
	fs.StringVar(&f.bc.XDSAddress, "xds-addr", "127.0.0.1:15012", "meshd's xDS address as the sidecar reaches it")
	fs.StringVar(&f.api, "api", string(bootstrap.Delta), "ADS flavour: delta or sotw")
	fs.StringVar(&f.bc.CredsDir, "creds-dir", "", "where the credential files are inside the sidecar (default: --out)")
	fs.StringVar(&f.caDir, "ca-dir", "", "the CA directory meshd serve uses (--ca-dir)")
	fs.StringVar(&f.caSecret, "ca-secret", "meshd-ca", "name of the CA within --ca-dir")
	fs.StringVar(&f.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain")
	fs.StringVar(&f.meshdNS, "meshd-namespace", "meshd-system", "meshd's namespace (its SPIFFE ID)")
	fs.StringVar(&f.out, "out", "", "output directory")
	fs.DurationVar(&f.ttl, "cert-ttl", 24*time.Hour, "lifetime of the xDS client certificate")
	fs.UintVar(&f.adminPort, "admin-port", 15000, "Envoy admin port on 127.0.0.1")
	return cmd
}

type bootstrapFlags struct {
	bc                                              bootstrap.Config
	caDir, caSecret, trustDomain, meshdNS, api, out string
	ttl                                             time.Duration
	adminPort                                       uint
}

// bootstrapCmd renders one sidecar's bootstrap and credentials into a
// directory.
func bootstrapCmd(ctx context.Context, f bootstrapFlags, stdout io.Writer) error {
	bc := f.bc
	if f.out == "" || f.caDir == "" {
		return fmt.Errorf("bootstrap: --out and --ca-dir are required")
	}
	out, err := filepath.Abs(f.out)
	if err != nil {
		return err
	}
	if bc.CredsDir == "" {
		bc.CredsDir = out
	}
	bc.API, bc.AdminPort = bootstrap.APIType(f.api), uint32(f.adminPort)
	bc.XDSServerSAN = ca.Identity{TrustDomain: f.trustDomain, Namespace: f.meshdNS, ServiceAccount: "meshd"}.String()
	b, err := bootstrap.Render(bc)
	if err != nil {
		return err
	}
	root, err := rootca.Load(ctx, store.Files{Dir: f.caDir}, f.caSecret, time.Now())
	if err != nil {
		return err
	}
	issuer, err := ca.NewInternal(ca.InternalConfig{Authority: root})
	if err != nil {
		return err
	}
	id := ca.Identity{TrustDomain: f.trustDomain, Namespace: bc.Namespace, ServiceAccount: bc.ServiceAccount}
	cert, err := issuer.Issue(ctx, ca.Request{Identity: id, TTL: f.ttl, CommonName: xds.NodeID(bc.Namespace, bc.Pod), Pod: bc.Namespace + "/" + bc.Pod})
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

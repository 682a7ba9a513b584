package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/config"
)

// caCmd is `meshd ca status|rotate-root`: the CA's state, and asking the
// running meshd to rotate the root (it steps the rotation; this only sets
// the request on the CA Secret or files).
func caCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "status" && args[0] != "rotate-root") {
		return errors.New("usage: meshd ca status|rotate-root [--kubeconfig K --namespace N | --ca-dir DIR] [--ca-secret meshd-ca]")
	}
	cfg := config.Default()
	fs := flag.NewFlagSet("ca "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig path (empty: in-cluster config)")
	fs.StringVar(&cfg.Namespace, "namespace", cfg.Namespace, "meshd's namespace")
	fs.StringVar(&cfg.CADir, "ca-dir", "", "the CA directory of meshd serve --ca-dir")
	fs.StringVar(&cfg.CASecret, "ca-secret", cfg.CASecret, "name of the CA Secret")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	var secrets ca.SecretUpdater
	if cfg.CADir != "" {
		secrets = ca.FileSecrets{Dir: cfg.CADir}
	} else {
		client, _, _, err := kubeClient(cfg, newLogger(stderr))
		if err != nil {
			return err
		}
		secrets = client.CoreV1().Secrets(cfg.Namespace)
	}
	s, err := secrets.Get(ctx, cfg.CASecret, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("ca: %s: %w", cfg.CASecret, err)
	}
	if args[0] == "rotate-root" {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[ca.AnnotationRotate] = "true"
		if s, err = secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("ca: request rotation: %w", err)
		}
		fmt.Fprintln(stdout, "root rotation requested; meshd steps it (bundle -> signing -> done)")
	}
	return printCAStatus(stdout, s)
}

func printCAStatus(w io.Writer, s *corev1.Secret) error {
	a, err := ca.AuthorityFromPEM(s.Data, time.Now())
	if err != nil {
		return err
	}
	phase := string(s.Data[ca.KeyPhase])
	if phase == "" {
		phase = "steady"
	}
	fmt.Fprintf(w, "phase: %s (since %s), rotation requested: %v\n", phase, orDash(string(s.Data[ca.KeyPhaseSince])), s.Annotations[ca.AnnotationRotate] == "true")
	fmt.Fprintf(w, "signing: %s serial %s, expires %s\n", a.Cert.Subject, a.Cert.SerialNumber.Text(16), a.Cert.NotAfter.UTC().Format(time.RFC3339))
	for _, r := range a.Roots {
		fmt.Fprintf(w, "trusted root: %s serial %s, expires %s\n", r.Subject, r.SerialNumber.Text(16), r.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Command probe checks a cluster from inside a pod, where the images have no
// shell: hack/cluster.sh check runs it in the probe image (hack/image.sh).
//
//	probe lookup NAME...   resolve each name with the pod's /etc/resolv.conf
//	                       (search paths, ndots) and print its addresses;
//	                       exit 1 if one does not resolve
//	probe nolookup NAME... exit 1 if one of the names resolves
//	probe get URL          GET URL, trusting the service account's CA and
//	                       sending its token; print the status and body
//	probe sleep            block until SIGTERM
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe lookup NAME... | nolookup NAME... | get URL | sleep")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "lookup":
		err = lookup(ctx, args, true)
	case "nolookup":
		err = lookup(ctx, args, false)
	case "get":
		if len(args) != 1 {
			err = fmt.Errorf("get wants one URL")
			break
		}
		err = get(ctx, args[0])
	case "sleep":
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
	default:
		err = fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

func lookup(ctx context.Context, names []string, want bool) error {
	var r net.Resolver // pure Go resolver (static build): /etc/resolv.conf as is
	bad := 0
	for _, n := range names {
		addrs, err := r.LookupHost(ctx, n)
		switch {
		case err == nil && want, err != nil && !want:
			fmt.Printf("ok %s %s\n", n, strings.Join(addrs, " "))
			if err != nil {
				fmt.Printf("   (%v)\n", err)
			}
		case err != nil:
			fmt.Printf("FAIL %s: %v\n", n, err)
			bad++
		default:
			fmt.Printf("FAIL %s resolved to %s\n", n, strings.Join(addrs, " "))
			bad++
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d lookups failed", bad, len(names))
	}
	return nil
}

func get(ctx context.Context, url string) error {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if ca, err := os.ReadFile(saDir + "/ca.crt"); err == nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	if tok, err := os.ReadFile(saDir + "/token"); err == nil {
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Printf("%s %s\n%s\n", url, resp.Status, body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// Command demo is `make demo`: the seed experiment, twice. A client pod
// curls a server pod (nginx) through its Service every 200 ms while tcpdump
// listens on the bridge between them: first without a mesh, then with
// meshd on its embedded default (a local directory of Kubernetes YAML, the
// CA in files) and real Envoy sidecars. It prints what the eavesdropper
// saw each time. Needs root (network namespaces); without root it runs a
// reduced demo on loopback addresses, without interception or capture, and
// says so. It removes all it made.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/meshd/meshd/internal/e2e"
)

var meshDuration time.Duration

func main() {
	var opts e2e.Options
	flag.StringVar(&opts.Meshd, "meshd", "bin/meshd", "meshd binary")
	flag.StringVar(&opts.Envoy, "envoy", ".tools/bin/envoy", "Envoy binary")
	flag.DurationVar(&opts.Duration, "duration", 10*time.Second, "how long the client sends requests without the mesh")
	flag.DurationVar(&meshDuration, "mesh-duration", 40*time.Second, "how long the client sends requests through the mesh")
	flag.DurationVar(&opts.CertTTL, "cert-ttl", time.Minute, "workload certificate lifetime in the mesh run (renewed at half of it, so 1m shows a renewal in 40s)")
	reduced := flag.Bool("reduced", os.Geteuid() != 0, "the reduced demo: no root needed (default when not root)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts.Progress = os.Stdout
	run := demo
	if *reduced {
		run = reducedDemo
	}
	if err := run(ctx, opts); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func demo(ctx context.Context, opts e2e.Options) error {
	fmt.Println("== 1. without a mesh")
	plain, err := e2e.Run(ctx, opts)
	if err != nil {
		return err
	}
	fmt.Println("\n== 2. with meshd and Envoy sidecars (STRICT mutual TLS)")
	opts.Mesh, opts.Operator, opts.Duration = true, true, meshDuration
	meshed, err := e2e.Run(ctx, opts)
	if err != nil {
		if meshed != nil {
			fmt.Fprintf(os.Stderr, "meshd log:\n%s\n", meshed.MeshdLog)
		}
		return err
	}
	fmt.Println("\n== meshd demo report")
	fmt.Printf("%-44s %-24s %s\n", "", "without mesh", "with meshd")
	row := func(name string, a, b any) { fmt.Printf("%-44s %-24v %v\n", name, a, b) }
	row("requests (curl http://<service>/)", fmt.Sprintf("%d, %d failed", plain.Requests, plain.Failures), fmt.Sprintf("%d, %d failed", meshed.Requests, meshed.Failures))
	row("client received the page", plain.BodyHasMarker, meshed.BodyHasMarker)
	row("tcpdump: page content in clear", plain.PlaintextSeen, meshed.PlaintextSeen)
	row("tcpdump: nginx's headers in clear", plain.HeadersSeen, meshed.HeadersSeen)
	row("tcpdump: TLS ClientHellos", plain.ClientHellos, meshed.ClientHellos)
	row("server sidecar authenticated peer", "-", meshed.PeerIdentities)
	row("server sidecar certificate serials", "-", meshed.ServerSerials)
	row("renewals under traffic ("+opts.CertTTL.String()+" certificates)", "-", max(len(meshed.ServerSerials)-1, 0))
	fmt.Println("\n== what an operator sees (run at the end of the mesh run)")
	for _, o := range meshed.Operator {
		fmt.Printf("$ %s\n%s\n", o[0], o[1])
	}
	ok := plain.PlaintextSeen && plain.Failures == 0 && !meshed.PlaintextSeen && !meshed.HeadersSeen &&
		meshed.Failures == 0 && meshed.Requests > 0 && meshed.ClientHellos > 0
	if !ok {
		return fmt.Errorf("the experiment did not show what it should (see the table)")
	}
	fmt.Println("\nverdict: without the mesh the eavesdropper reads the page; with meshd it reads nothing, and every request succeeded.")
	return authzDemo(ctx, opts)
}

// authzDemo is part 3: an AuthorizationPolicy in meshd's local dir lets
// client-0 call web and keeps other-0 out.
func authzDemo(ctx context.Context, opts e2e.Options) error {
	fmt.Println("\n== 3. authorization by identity: web accepts client-0 (service account client), not other-0")
	res, err := e2e.RunAuthz(ctx, opts)
	if err != nil {
		if res != nil {
			fmt.Fprintf(os.Stderr, "meshd log:\n%s\n", res.MeshdLog)
		}
		return err
	}
	fmt.Println("\n== meshd authorization report (HTTP: service port 80; TCP: service port 90)")
	fmt.Printf("%-18s %-10s %-6s %s\n", "policies", "caller", "port", "got")
	phases := map[string]string{"none": "none", "allow": "ALLOW client", "deny-over-allow": "+ DENY client", "dry-run-deny": "+ DENY (dry run)"}
	for _, o := range res.Outcomes {
		fmt.Printf("%-18s %-10s %-6s %s\n", phases[o.Phase], o.Caller, o.Port, o.Got)
	}
	fmt.Printf("\npolicy added and removed %d times under client-0's traffic: %d requests, %d failed; sidecar converged in %v\n",
		res.Flips, res.Requests, res.Failures, res.Convergence)
	fmt.Printf("tcpdump: page or headers in clear: %v\n", res.PlaintextSeen)
	fmt.Println("\nweb-0's sidecar logged (first lines):")
	for _, l := range res.AuthzLog[:min(4, len(res.AuthzLog))] {
		fmt.Println("  " + l)
	}
	fmt.Printf("\n$ meshd explain --from other-0.demo --to web.demo\n%s\n", res.Explain["other-0"])
	if res.Failures > 0 || res.PlaintextSeen || len(res.Outcomes) == 0 {
		return fmt.Errorf("the authorization experiment did not show what it should (see the report)")
	}
	for _, o := range res.Outcomes {
		if want := wantAuthz(o); o.Got != want {
			return fmt.Errorf("%s: %s on %s got %s, want %s", phases[o.Phase], o.Caller, o.Port, o.Got, want)
		}
	}
	fmt.Println("verdict: the allowed client kept getting 200, the other was refused (403 on HTTP, connection closed on TCP),")
	fmt.Println("DENY overrode ALLOW, the dry run refused nothing but was logged, and no allowed request failed.")
	return nil
}

// wantAuthz is what a caller should get in a phase of RunAuthz.
func wantAuthz(o e2e.AuthzOutcome) string {
	refused := "403"
	if o.Port == "tcp" {
		refused = "closed"
	}
	switch {
	case o.Phase == "none", o.Caller == "client-0" && o.Phase != "deny-over-allow":
		return "200"
	}
	return refused
}

// reducedDemo is the demo without root: both pods on loopback addresses of
// this host, their sidecars without interception, nothing captured.
func reducedDemo(ctx context.Context, opts e2e.Options) error {
	fmt.Println("== reduced demo: not running as root, so no network namespaces, no iptables interception and no")
	fmt.Println("   tcpdump. The pods are loopback addresses (web-0 127.0.0.2, client-0 127.0.0.3), annotated")
	fmt.Println("   meshd.io/interception: none; the client app asks its own sidecar for the service. Run as root")
	fmt.Println("   for the full experiment (`sudo make demo`).")
	opts.Duration, opts.Operator = meshDuration, true
	res, err := e2e.RunLocal(ctx, opts)
	if err != nil {
		if res != nil {
			fmt.Fprintf(os.Stderr, "meshd log:\n%s\n", res.MeshdLog)
			for name, l := range res.EnvoyLogs {
				fmt.Fprintf(os.Stderr, "envoy %s log:\n%s\n", name, l)
			}
		}
		return err
	}
	fmt.Println("\n== meshd reduced demo report")
	row := func(name string, v any) { fmt.Printf("%-52s %v\n", name, v) }
	row("sidecars connected and in sync", res.Proxies)
	row("requests (client -> "+res.URL+")", fmt.Sprintf("%d, %d failed", res.Requests, res.Failures))
	row("client received the page", res.BodyHasMarker)
	row("app saw the peer (x-forwarded-client-cert)", res.AppSawPeers)
	row("server sidecar authenticated peer (access log)", res.SidecarPeers)
	row("server sidecar presents", fmt.Sprintf("%s, expires %s", res.ServerIdentity, res.ServerNotAfter.Format(time.RFC3339)))
	row("plain HTTP to the server sidecar refused", res.PlaintextRefused)
	row("TLS without a mesh certificate refused", res.NoCertRefused)
	row("server sidecar certificate serials", res.ServerSerials)
	row("renewals under traffic ("+opts.CertTTL.String()+" certificates)", max(len(res.ServerSerials)-1, 0))
	fmt.Println("\n== what an operator sees")
	for _, o := range res.Operator {
		fmt.Printf("$ %s\n%s\n", o[0], o[1])
	}
	ok := res.Failures == 0 && res.Requests > 0 && res.BodyHasMarker && res.PlaintextRefused && res.NoCertRefused &&
		slices.Contains(res.AppSawPeers, "spiffe://cluster.local/ns/demo/sa/client")
	if !ok {
		return fmt.Errorf("the reduced experiment did not show what it should (see the table)")
	}
	fmt.Println("\nverdict: the client's requests crossed between the sidecars with mutual TLS (the server's app saw the")
	fmt.Println("client's SPIFFE ID), strangers were refused, and every request succeeded. No eavesdropper was run.")
	return nil
}

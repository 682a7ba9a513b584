package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/meshd/meshd/internal/debug"
	"github.com/meshd/meshd/internal/remote"
)

// Operator commands: they read a running meshd's debug API.
//
//	meshd proxy-status
//	meshd proxy-config <pod>.<ns> [--type clusters|listeners|routes|endpoints|secrets]
//	meshd certs [<pod>.<ns>]
//	meshd explain --from <pod>.<ns> --to <svc>.<ns>|<pod>.<ns>
//	meshd check
//
// Every one takes -o table|json|yaml. --debug-addr may name several
// replicas (comma-separated): each replica serves the sidecars connected to
// it, so proxy-status and check ask every one, and the commands about one
// proxy ask the replica it is connected to. Without --debug-addr, and with a
// kubeconfig, every meshd pod is reached through the apiserver
// (internal/remote); without either, 127.0.0.1:15014 (an embedded meshd).
type opsFlags struct {
	addr, token string
	addrs       []string
	output      string
	raw         bool // -o json or yaml: print the answer, not a table

	kube                remote.Kubeconfig
	namespace, selector string
	debugPort           int
	// Through the apiserver: the pod behind each local address, and the
	// token to send it.
	names, tokens map[string]string
	forwards      *remote.Forwards
}

const defaultDebugAddr = "127.0.0.1:15014"

// newOpsCmd is one operator verb with the flags all of them share.
func newOpsCmd(c *cobra.Command, run func(ctx context.Context, o *opsFlags, args []string, stdout io.Writer) error) (*cobra.Command, *opsFlags) {
	o := &opsFlags{}
	fs := c.Flags()
	fs.StringVar(&o.addr, "debug-addr", defaultDebugAddr, "meshd's debug API address; several replicas comma-separated (not set: every meshd pod through the apiserver when a kubeconfig is found)")
	fs.StringVar(&o.token, "debug-token", "", "bearer token of the debug API (through the apiserver to a meshd with --debug-auth kubernetes: the kubeconfig's token by default)")
	fs.StringVar(&o.kube.Path, "kubeconfig", "", "kubeconfig path (default: $KUBECONFIG, else ~/.kube/config)")
	fs.StringVar(&o.kube.Context, "context", "", "kubeconfig context (default: the current one)")
	fs.StringVarP(&o.namespace, "namespace", "n", remote.DefaultNamespace, "meshd's namespace")
	fs.StringVarP(&o.selector, "selector", "l", remote.DefaultSelector, "label selector of meshd's pods")
	fs.IntVar(&o.debugPort, "debug-port", 0, "meshd's debug port inside its pods (default: from the pod's --debug-addr, else 15014)")
	addOutputFlag(c, &o.output)
	c.Args = cobra.NoArgs
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if err := o.open(cmd); err != nil {
			return err
		}
		defer o.close()
		return run(cmd.Context(), o, args, cmd.OutOrStdout())
	}
	return c, o
}

// open checks the output format and finds the replicas: --debug-addr, or a
// port-forward to every meshd pod when it is not given and a kubeconfig is
// found.
func (o *opsFlags) open(cmd *cobra.Command) error {
	switch o.output {
	case "table":
	case "json", "yaml":
		o.raw = true
	default:
		return outputError(o.output)
	}
	if !cmd.Flags().Changed("debug-addr") {
		rc, err := o.kube.Load()
		switch {
		case err == nil:
			return o.forward(cmd.Context(), rc, cmd.ErrOrStderr())
		case !errors.Is(err, remote.ErrNoKubeconfig) || o.kube.Path != "":
			return err
		}
	}
	for _, a := range strings.Split(o.addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			o.addrs = append(o.addrs, a)
		}
	}
	if len(o.addrs) == 0 {
		return usageError{err: errors.New("--debug-addr: no address")}
	}
	o.addr = o.addrs[0]
	return nil
}

func (o *opsFlags) forward(ctx context.Context, rc *rest.Config, stderr io.Writer) error {
	fw, err := remote.Open(ctx, remote.Config{REST: rc, Namespace: o.namespace, Selector: o.selector, Port: o.debugPort, Errors: stderr})
	if err != nil {
		return err
	}
	o.forwards, o.names, o.tokens = fw, map[string]string{}, map[string]string{}
	for _, r := range fw.Replicas {
		o.addrs = append(o.addrs, r.Addr)
		o.names[r.Addr], o.tokens[r.Addr] = r.Pod, r.Token
	}
	o.addr = o.addrs[0]
	return nil
}

func (o *opsFlags) close() {
	if o.forwards != nil {
		o.forwards.Close()
	}
}

// label names a replica for people: its pod when reached through the
// apiserver, else its address.
func (o *opsFlags) label(addr string) string {
	if n := o.names[addr]; n != "" {
		return n
	}
	return addr
}

func newOpsCmds() []*cobra.Command {
	status, _ := newOpsCmd(&cobra.Command{
		Use:   "proxy-status",
		Short: "Connected proxies and their sync state",
		Long: `The sidecars connected to meshd, per xDS type: SYNCED (the version sent was
ACKed), NACKED, STALE (no ACK for a while), NOT SENT. Asks every replica.`,
		Example: `  # every meshd pod of the current cluster, through the apiserver
  meshd proxy-status
  kubectl meshd proxy-status -n meshd-system

  # replicas you reach yourself
  meshd proxy-status --debug-addr 127.0.0.1:15014,127.0.0.1:15015 -o yaml`,
	}, proxyStatusCmd)
	var typ string
	config, _ := newOpsCmd(&cobra.Command{
		Use:   "proxy-config <pod>.<namespace>",
		Short: "The xDS resources meshd serves one proxy",
		Example: `  meshd proxy-config web-0.demo
  meshd proxy-config web-0.demo --type clusters`,
		ValidArgsFunction: cobra.NoFileCompletions,
	}, func(ctx context.Context, o *opsFlags, args []string, stdout io.Writer) error {
		return proxyConfigCmd(ctx, o, args[0], typ, stdout)
	})
	config.Args = cobra.ExactArgs(1)
	config.Flags().StringVar(&typ, "type", "", "only this type: clusters, listeners, routes, endpoints, secrets")
	_ = config.RegisterFlagCompletionFunc("type", cobra.FixedCompletions([]string{"clusters", "listeners", "routes", "endpoints", "secrets"}, cobra.ShellCompDirectiveNoFileComp))
	certs, _ := newOpsCmd(&cobra.Command{
		Use:   "certs [<pod>.<namespace>]",
		Short: "Issued certificates, CA roots, rotation state",
		Example: `  meshd certs
  meshd certs web-0.demo -o json`,
		ValidArgsFunction: cobra.NoFileCompletions,
	}, certsCmd)
	certs.Args = cobra.MaximumNArgs(1)
	var from, to string
	explain, _ := newOpsCmd(&cobra.Command{
		Use:     "explain --from <pod>.<namespace> --to <service>.<namespace>|<pod>.<namespace>",
		Short:   "Why traffic from a pod to a service does or does not get mTLS",
		Example: `  meshd explain --from client-0.demo --to web.demo`,
	}, func(ctx context.Context, o *opsFlags, _ []string, stdout io.Writer) error {
		return explainCmd(ctx, o, from, to, stdout)
	})
	explain.Flags().StringVar(&from, "from", "", "client pod, <pod>.<namespace>")
	explain.Flags().StringVar(&to, "to", "", "server service or pod, <name>.<namespace>")
	_ = explain.MarkFlagRequired("from")
	_ = explain.MarkFlagRequired("to")
	check, _ := newOpsCmd(&cobra.Command{
		Use:   "check",
		Short: "Pre-flight and health: ready, CA, issuer, webhook, proxies in sync",
		Long: `Checks every replica: ready, the CA valid and not near expiry, the issuer,
the injection webhook, every proxy in sync. Exits non-zero if a check fails.`,
		Example: `  meshd check
  meshd check -o json`,
	}, checkCmd)
	return []*cobra.Command{status, config, certs, explain, check}
}

// at returns the flags for one replica.
func (o *opsFlags) at(addr string) *opsFlags {
	c := *o
	c.addr, c.addrs = addr, []string{addr}
	return &c
}

// forNode returns the flags for the replica the proxy is connected to (the
// first replica if none has it: its answer then says it is not connected).
func (o *opsFlags) forNode(ctx context.Context, node string) *opsFlags {
	if len(o.addrs) < 2 || node == "" {
		return o
	}
	for _, a := range o.addrs {
		var v debug.Proxies
		if _, err := o.at(a).get(ctx, "/debug/proxies", url.Values{"node": {node}}, &v); err == nil && len(v.Proxies) > 0 {
			return o.at(a)
		}
	}
	return o
}

// replicaNote prefixes a detail with the replica when there are several
// (no replica: says how many were asked).
func (o *opsFlags) replicaNote(addr, detail string) string {
	switch {
	case len(o.addrs) < 2:
		return detail
	case addr == "":
		return fmt.Sprintf("%s (over %d replicas)", detail, len(o.addrs))
	}
	return o.label(addr) + ": " + detail
}

// print writes a raw answer as JSON or YAML.
func (o *opsFlags) print(w io.Writer, b []byte) error { return printRaw(w, o.output, b) }

// printRaw writes JSON as JSON or, for yaml, as YAML.
func printRaw(w io.Writer, output string, b []byte) error {
	if output == "yaml" {
		y, err := yaml.JSONToYAML(b)
		if err != nil {
			return err
		}
		b = y
	}
	_, err := w.Write(b)
	return err
}

func (o *opsFlags) get(ctx context.Context, path string, q url.Values, v any) ([]byte, error) {
	u := "http://" + o.addr + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if t := cmp.Or(o.token, o.tokens[o.addr]); t != "" {
		req.Header.Set("Authorization", "Bearer "+t)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("meshd debug API at %s: %w", o.label(o.addr), err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("meshd: %s", e.Error)
		}
		return nil, fmt.Errorf("meshd: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			return nil, fmt.Errorf("meshd: decode %s: %w", path, err)
		}
	}
	return b, nil
}

// proxyRow is one proxy of /debug/proxies (the fields proxy-status prints).
type proxyRow struct {
	Replica        string    `json:"replica,omitempty"`
	NodeID         string    `json:"node_id"`
	Identity       string    `json:"identity"`
	Delta          bool      `json:"delta"`
	ConnectedSince time.Time `json:"connected_since"`
	Types          map[string]struct {
		Sent     string `json:"sent_version"`
		Acked    string `json:"acked_version"`
		NACKs    int    `json:"nacks"`
		LastNACK *struct {
			Error string `json:"error"`
		} `json:"last_nack"`
	} `json:"types"`
	Stale []string `json:"stale_types,omitempty"`
}

// proxyStatusCmd prints every replica's proxies and how far each resource
// type is in sync.
func proxyStatusCmd(ctx context.Context, o *opsFlags, _ []string, stdout io.Writer) error {
	all, raw, err := proxyRows(ctx, o)
	if err != nil {
		return err
	}
	if o.raw {
		b, err := json.Marshal(map[string]any{"proxies": raw})
		return errors.Join(err, o.print(stdout, b))
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	head := "PROXY\tIDENTITY\tAPI\tCDS\tLDS\tEDS\tRDS\tSDS\tSINCE"
	if len(o.addrs) > 1 {
		head += "\tREPLICA"
	}
	fmt.Fprintln(tw, head)
	for _, p := range all {
		api := "sotw"
		if p.Delta {
			api = "delta"
		}
		r := []string{p.NodeID, p.Identity, api}
		for _, t := range []string{"cluster.v3.Cluster", "listener.v3.Listener", "endpoint.v3.ClusterLoadAssignment", "route.v3.RouteConfiguration", "tls.v3.Secret"} {
			r = append(r, syncState(p.Types, t, p.Stale))
		}
		r = append(r, p.ConnectedSince.Format(time.RFC3339))
		if len(o.addrs) > 1 {
			r = append(r, p.Replica)
		}
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// proxyRows reads /debug/proxies from every replica: the rows, and each
// proxy's JSON as served (with "replica" added when there are several).
func proxyRows(ctx context.Context, o *opsFlags) ([]proxyRow, []json.RawMessage, error) {
	var all []proxyRow
	raw := []json.RawMessage{} // "proxies": [] with none, not null
	for _, a := range o.addrs {
		var v struct {
			Proxies []json.RawMessage `json:"proxies"`
		}
		if _, err := o.at(a).get(ctx, "/debug/proxies", nil, &v); err != nil {
			return nil, nil, err
		}
		for _, p := range v.Proxies {
			var r proxyRow
			if err := json.Unmarshal(p, &r); err != nil {
				return nil, nil, fmt.Errorf("meshd: decode /debug/proxies: %w", err)
			}
			if len(o.addrs) > 1 {
				r.Replica = o.label(a)
				p = withReplica(p, r.Replica)
			}
			all = append(all, r)
			raw = append(raw, p)
		}
	}
	return all, raw, nil
}

// withReplica adds "replica": addr to a JSON object.
func withReplica(obj json.RawMessage, addr string) json.RawMessage {
	var m map[string]json.RawMessage
	if json.Unmarshal(obj, &m) != nil {
		return obj
	}
	m["replica"], _ = json.Marshal(addr)
	b, err := json.Marshal(m)
	if err != nil {
		return obj
	}
	return b
}

// syncState is SYNCED (sent = ACKed), NACKED, STALE or NOT SENT for a type.
func syncState[T interface{}](types map[string]T, suffix string, stale []string) string {
	for url, st := range types {
		if !strings.HasSuffix(url, suffix) {
			continue
		}
		b, _ := json.Marshal(st)
		var s struct {
			Sent     string `json:"sent_version"`
			Acked    string `json:"acked_version"`
			LastNACK *struct {
				Nonce string `json:"nonce"`
			} `json:"last_nack"`
		}
		_ = json.Unmarshal(b, &s)
		switch {
		case contains(stale, url):
			return "STALE"
		case s.Sent != "" && s.Sent == s.Acked:
			return "SYNCED"
		case s.LastNACK != nil:
			return "NACKED"
		case s.Sent == "":
			return "NOT SENT"
		}
		return "SENT"
	}
	return "-"
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func proxyConfigCmd(ctx context.Context, o *opsFlags, proxy, typ string, stdout io.Writer) error {
	o = o.forNode(ctx, proxy)
	var v struct {
		Resources map[string][]json.RawMessage `json:"resources"`
	}
	b, err := o.get(ctx, "/debug/config_dump", url.Values{"proxy": {proxy}}, &v)
	if err != nil {
		return err
	}
	if typ == "" {
		return o.print(stdout, b)
	}
	suffix := map[string]string{"clusters": "Cluster", "listeners": "Listener", "routes": "RouteConfiguration",
		"endpoints": "ClusterLoadAssignment", "secrets": "Secret"}[typ]
	if suffix == "" {
		return fmt.Errorf("--type %q: want clusters, listeners, routes, endpoints or secrets", typ)
	}
	keys := make([]string, 0, len(v.Resources))
	for k := range v.Resources {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if strings.HasSuffix(k, "."+suffix) {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(v.Resources[k])
		}
	}
	fmt.Fprintln(stdout, "[]")
	return nil
}

func certsCmd(ctx context.Context, o *opsFlags, pos []string, stdout io.Writer) error {
	q := url.Values{}
	if len(pos) == 1 {
		q.Set("proxy", pos[0])
		o = o.forNode(ctx, pos[0])
	}
	var v struct {
		CA struct {
			Signing struct{ Subject, Serial string } `json:"signing"`
			Roots   []struct {
				Subject, Serial string
				NotAfter        time.Time `json:"not_after"`
			} `json:"trusted_roots"`
			Phase       string `json:"rotation_phase"`
			Credentials string `json:"sidecar_credentials"`
			Why         string `json:"sidecar_credentials_reason"`
		} `json:"ca"`
		Certificates []struct {
			Proxy, Identity, Serial string
			NotAfter                time.Time `json:"not_after"`
		} `json:"certificates"`
	}
	b, err := o.get(ctx, "/debug/certs", q, &v)
	if err != nil || o.raw {
		return errors.Join(err, o.print(stdout, b))
	}
	fmt.Fprintf(stdout, "CA: signing serial %s, rotation %s\n", v.CA.Signing.Serial, v.CA.Phase)
	for _, r := range v.CA.Roots {
		fmt.Fprintf(stdout, "  trusted root %s (expires %s)\n", r.Serial, r.NotAfter.Format(time.DateOnly))
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROXY\tIDENTITY\tSERIAL\tEXPIRES")
	for _, c := range v.Certificates {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Proxy, c.Identity, c.Serial, c.NotAfter.Format(time.RFC3339))
	}
	return tw.Flush()
}

// explainView is what /debug/explain answers (the fields the command prints).
type explainView struct {
	Verdict       string   `json:"verdict"`
	Authorization string   `json:"authorization"`
	Findings      []string `json:"findings"`
	Ports         []struct {
		Port         uint32   `json:"port"`
		Protocol     string   `json:"protocol"`
		Chain        string   `json:"filter_chain"`
		Cluster      string   `json:"cluster"`
		ExpectedSANs []string `json:"expected_server_sans"`
		Client       string   `json:"client_presents"`
		Balancing    string   `json:"balancing"`
		Endpoints    []struct {
			Address string `json:"address"`
			Port    uint32 `json:"port"`
			Ready   bool   `json:"ready"`
			MTLS    bool   `json:"mtls"`
			Authz   *struct {
				Decision string   `json:"decision"`
				Reason   string   `json:"reason"`
				Rules    []string `json:"rules"`
				DryRun   string   `json:"dry_run"`
			} `json:"authorization"`
			Server struct {
				Workload  string `json:"workload"`
				Connected bool   `json:"proxy_connected"`
				Mode      string `json:"mode"`
			} `json:"server"`
		} `json:"endpoints"`
	} `json:"ports"`
	PodIP []struct {
		Address string `json:"address"`
		Port    uint32 `json:"port"`
		Path    string `json:"path"`
		MTLS    bool   `json:"mtls"`
		Outcome string `json:"outcome"`
	} `json:"pod_ip"`
}

// explainCmd prints /debug/explain for from -> to, asked of the replica
// from is connected to.
func explainCmd(ctx context.Context, o *opsFlags, from, to string, stdout io.Writer) error {
	var v explainView
	all := o
	o = o.forNode(ctx, from)
	b, err := o.get(ctx, "/debug/explain", url.Values{"from": {from}, "to": {to}}, &v)
	if err != nil || o.raw {
		return errors.Join(err, o.print(stdout, b))
	}
	// A server sidecar connected to another replica is connected.
	v.connectedElsewhere(connectedElsewhere(ctx, all, o.addr))
	v.print(stdout, from, to)
	return nil
}

// connectedElsewhere marks the server sidecars connected to other replicas
// as connected and drops the findings that say they are not.
func (v *explainView) connectedElsewhere(elsewhere map[string]bool) {
	var findings []string
	for _, f := range v.Findings {
		keep := true
		for w := range elsewhere {
			if strings.Contains(f, "server "+w+" ") && strings.Contains(f, "connected to this replica") {
				keep = false
			}
		}
		if keep {
			findings = append(findings, f)
		}
	}
	v.Findings = findings
	for i := range v.Ports {
		for j := range v.Ports[i].Endpoints {
			if e := &v.Ports[i].Endpoints[j]; elsewhere[e.Server.Workload] {
				e.Server.Connected = true
			}
		}
	}
}

func (v *explainView) print(stdout io.Writer, from, to string) {
	fmt.Fprintf(stdout, "%s -> %s: %s\n", from, to, strings.ToUpper(v.Verdict))
	if v.Authorization != "" {
		fmt.Fprintf(stdout, "authorization: %s\n", strings.ToUpper(v.Authorization))
	}
	for _, p := range v.Ports {
		if p.Chain == "" {
			fmt.Fprintf(stdout, "port %d (%s): no client sidecar, sent as the app sends it\n", p.Port, p.Protocol)
		} else {
			balancing := ""
			if p.Balancing != "" {
				balancing = " (" + p.Balancing + ")"
			}
			fmt.Fprintf(stdout, "port %d (%s): listener outbound, chain %s, cluster %s%s\n", p.Port, p.Protocol, p.Chain, p.Cluster, balancing)
			fmt.Fprintf(stdout, "  client presents %s; expects server SANs %v (secrets default, ROOTCA over SDS)\n", orDash(p.Client), p.ExpectedSANs)
		}
		for _, e := range p.Endpoints {
			fmt.Fprintf(stdout, "  endpoint %s:%d ready=%v mtls=%v server=%s sidecar-connected=%v mode=%s\n",
				e.Address, e.Port, e.Ready, e.MTLS, e.Server.Workload, e.Server.Connected, orDash(e.Server.Mode))
			if a := e.Authz; a != nil {
				fmt.Fprintf(stdout, "    authorization: %s: %s\n", strings.ToUpper(a.Decision), a.Reason)
				if a.DryRun != "" {
					fmt.Fprintf(stdout, "    dry run: %s\n", a.DryRun)
				}
			}
		}
	}
	for _, p := range v.PodIP {
		fmt.Fprintf(stdout, "pod IP %s:%d: %s, mtls=%v: %s\n", p.Address, p.Port, p.Path, p.MTLS, p.Outcome)
	}
	for _, f := range v.Findings {
		fmt.Fprintln(stdout, "! "+f)
	}
}

// connectedElsewhere returns the proxies connected to the replicas other
// than addr.
func connectedElsewhere(ctx context.Context, o *opsFlags, addr string) map[string]bool {
	out := map[string]bool{}
	for _, a := range o.addrs {
		if a == addr {
			continue
		}
		var v debug.Proxies
		if _, err := o.at(a).get(ctx, "/debug/proxies", nil, &v); err == nil {
			for _, p := range v.Proxies {
				out[p.NodeID] = true
			}
		}
	}
	return out
}

// checkResult is one line of `meshd check`.
type checkResult struct {
	Check  string `json:"check"`
	Status string `json:"status"` // OK, WARN, FAIL, SKIP
	Detail string `json:"detail"`
}

// checkCmd is the pre-flight and health check: meshd ready, CA valid and
// not near expiry, issuer, proxies in sync. It fails if any check fails.
func checkCmd(ctx context.Context, o *opsFlags, _ []string, stdout io.Writer) error {
	var results []checkResult
	add := func(check, status, format string, a ...any) {
		results = append(results, checkResult{check, status, fmt.Sprintf(format, a...)})
	}
	for _, a := range o.addrs {
		r := o.at(a)
		note := func(check, status, format string, args ...any) {
			add(check, status, "%s", o.replicaNote(a, fmt.Sprintf(format, args...)))
		}
		if _, err := r.get(ctx, "/readyz", nil, nil); err != nil {
			note("ready", "FAIL", "%v", err)
		} else {
			note("ready", "OK", "informers synced, CA loaded, mesh config published")
		}
		checkCA(ctx, r, note)
		checkWebhook(ctx, r, note)
	}
	checkProxies(ctx, o, add)
	failed := 0
	for _, r := range results {
		if r.Status == "FAIL" {
			failed++
		}
	}
	if o.raw {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := o.print(stdout, append(b, '\n')); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		for _, r := range results {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Status, r.Check, r.Detail)
		}
		tw.Flush()
	}
	if failed > 0 {
		return fmt.Errorf("%d check(s) failed", failed)
	}
	return nil
}

func checkCA(ctx context.Context, o *opsFlags, add func(check, status, format string, a ...any)) {
	var v struct {
		CA struct {
			Backend        string `json:"backend"`
			WorkloadIssuer string `json:"workload_issuer"`
			Signing        struct {
				Serial   string    `json:"serial"`
				NotAfter time.Time `json:"not_after"`
			} `json:"signing"`
			Roots []struct {
				NotAfter time.Time `json:"not_after"`
			} `json:"trusted_roots"`
			Phase       string `json:"rotation_phase"`
			Credentials string `json:"sidecar_credentials"`
			Why         string `json:"sidecar_credentials_reason"`
		} `json:"ca"`
		Earliest time.Time `json:"earliest_expiry"`
	}
	if _, err := o.get(ctx, "/debug/certs", nil, &v); err != nil {
		add("ca", "FAIL", "%v", err)
		return
	}
	left := time.Until(v.CA.Signing.NotAfter)
	switch {
	case left <= 0:
		add("ca", "FAIL", "the signing certificate %s expired at %s", v.CA.Signing.Serial, v.CA.Signing.NotAfter)
	case left < 30*24*time.Hour:
		add("ca", "WARN", "the signing certificate %s expires in %s; a root rotation starts 30 days before expiry", v.CA.Signing.Serial, left.Round(time.Hour))
	default:
		add("ca", "OK", "%s CA, signing serial %s valid until %s, %d trusted root(s), rotation %s",
			v.CA.Backend, v.CA.Signing.Serial, v.CA.Signing.NotAfter.Format(time.DateOnly), len(v.CA.Roots), v.CA.Phase)
	}
	if v.CA.WorkloadIssuer != "" {
		add("issuer", "OK", "workload certificates from %s (failures: Warning Events on the pods, meshd_ca_issue_failures_total); the %s CA signs meshd's own", v.CA.WorkloadIssuer, v.CA.Backend)
	} else {
		add("issuer", "OK", "%s CA, in meshd's process (nothing to call; this check issues nothing): failed issuance shows as meshd_ca_issue_failures_total and Warning Events on the pods", v.CA.Backend)
	}
	switch v.CA.Credentials {
	case "pod-certificate":
		add("credentials", "OK", "sidecars' xDS credentials from podCertificate volumes (key made by the kubelet, signed by meshd as meshd.io/spiffe, no per-pod Secret): %s", v.CA.Why)
	case "secret":
		add("credentials", "OK", "sidecars' xDS credentials from per-pod Secrets (key made by meshd): %s", v.CA.Why)
	}
	if !v.Earliest.IsZero() && time.Until(v.Earliest) <= 0 {
		add("certificates", "FAIL", "a proxy certificate expired at %s: renewal is failing", v.Earliest)
	}
}

// checkProxies looks at the proxies of every replica together.
func checkProxies(ctx context.Context, o *opsFlags, add func(check, status, format string, a ...any)) {
	var v debug.Proxies
	for _, a := range o.addrs {
		var part debug.Proxies
		if _, err := o.at(a).get(ctx, "/debug/proxies", nil, &part); err != nil {
			add("proxies", "FAIL", "%v", err)
			return
		}
		v.Proxies = append(v.Proxies, part.Proxies...)
	}
	var nacked, stale []string
	synced := 0
	for _, p := range v.Proxies {
		ok := len(p.Stale) == 0
		for typ, t := range p.Types {
			if t != nil && t.LastNACK != nil && t.LastNACK.Nonce == t.SentNonce {
				nacked = append(nacked, fmt.Sprintf("%s rejects %s: %s", p.NodeID, typ[strings.LastIndex(typ, ".")+1:], t.LastNACK.Error))
				ok = false
			}
		}
		if len(p.Stale) > 0 {
			stale = append(stale, p.NodeID)
		}
		if ok {
			synced++
		}
	}
	switch {
	case len(nacked) > 0:
		add("proxies", "FAIL", "%d of %d in sync; %s", synced, len(v.Proxies), strings.Join(nacked, "; "))
	case len(stale) > 0:
		add("proxies", "WARN", "%d of %d in sync; no ACK for a while from %s", synced, len(v.Proxies), strings.Join(stale, ", "))
	default:
		add("proxies", "OK", "%d connected, all in sync%s", len(v.Proxies), o.replicaNote("", ""))
	}
}

func checkWebhook(ctx context.Context, o *opsFlags, add func(check, status, format string, a ...any)) {
	var v debug.WebhookView
	if _, err := o.get(ctx, "/debug/webhook", nil, &v); err != nil {
		add("webhook", "FAIL", "%v", err)
		return
	}
	switch {
	case !v.Enabled:
		add("webhook", "SKIP", "injection is off in this meshd (no --webhook-addr); sidecars are bootstrapped with `meshd bootstrap`")
	case v.Problem != "":
		add("webhook", "FAIL", "%s", v.Problem)
	case v.Callers == "":
		add("webhook", "WARN", "%s answers TLS verified with the mesh CA and %s's caBundle is current, but it authenticates no caller: it answers anyone reaching its port (patches only; admission writes nothing); set --webhook-client-ca (deploy/examples/webhook-auth)",
			v.Address, v.Configuration)
	default:
		add("webhook", "OK", "%s answers TLS verified with the mesh CA; %s's caBundle is current; callers must present %s", v.Address, v.Configuration, v.Callers)
	}
}

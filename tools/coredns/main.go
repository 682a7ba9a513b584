// Command coredns is a CoreDNS build with only the plugins the one-node
// cluster's DNS needs (hack/cluster.sh runs it in kube-system): it answers
// cluster.local and the reverse zones of the pod and Service ranges from the
// apiserver, and nothing else. There is no forward plugin on purpose: names
// outside the cluster never reach the host's resolver.
//
// Built by `bash hack/tools.sh coredns` from the Go module proxy.
package main

import (
	"fmt"
	"os"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// The plugins, registered by import. Keep this list and directives in step.
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// directives in execution order: the relative order of CoreDNS's own
// core/dnsserver/zdirectives.go.
var directives = []string{
	"ready",
	"health",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"kubernetes",
}

func main() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		fmt.Fprintln(os.Stderr, "coredns:", err)
		os.Exit(1)
	}
	coremain.Run()
}

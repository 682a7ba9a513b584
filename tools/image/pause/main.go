// Command pause is the sandbox ("pause") container of the one-node cluster's
// pods (containerd's sandbox_image, built by hack/image.sh): it holds the
// pod's namespaces, reaps orphans and exits on SIGINT or SIGTERM.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	// As PID 1 of the pod's PID namespace (when shared), reap children:
	// ignoring SIGCHLD makes the kernel reap them.
	signal.Ignore(syscall.SIGCHLD)
	<-sig
	os.Exit(0)
}

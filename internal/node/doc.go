// Package node holds the real-node end-to-end test: meshd deployed from
// deploy/ into a one-node cluster started by hack/cluster.sh, workloads in
// real pods, an eavesdropper on the node's bridge (package pcap reads its
// capture).
//
// Where it sits: test-only; nothing in meshd imports it.
package node

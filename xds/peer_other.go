//go:build !linux

package xds

import (
	"net"
	"time"
)

// setUserTimeout does nothing beyond Linux: a peer gone with meshd's data
// in flight is found by the kernel's retransmission limit instead.
func setUserTimeout(*net.TCPConn, time.Duration) error { return nil }

package xds

import (
	"net"
	"time"
)

// A client is judged alive by its kernel, not by gRPC pings.
//
// grpc-go's server pings a connection after a quiet spell and closes it
// when no frame comes back in time. But a ping written behind a large
// response reaches the client only once it has read that response: a
// sidecar taking its first configuration (megabytes at 1,000 services)
// through a slow or busy link, or in a reconnect storm, is quiet for that
// long, and was cut as dead, to reconnect and be sent everything again
// (TestSlowPeerIsKept fails so with pings at its peer timeout).
//
// TCP tells the two apart: a live peer's kernel acknowledges what it
// receives, and opens its window as the sidecar reads. watchPeer sets a
// connection's TCP_USER_TIMEOUT, so that data unacknowledged, or held back
// by a window that stays shut, for longer than the timeout closes it (the
// host or the sidecar gone or stuck with meshd sending), and keepalive
// probes, so that an idle connection whose peer stops answering them is
// closed too.
//
// A sidecar whose kernel lives on while Envoy is stuck and idle keeps its
// connection until meshd's pushes fill its buffers; its pod's probes are
// what restart it.
//
// Both are set on each accepted connection, not once on the listener:
// TCP_USER_TIMEOUT set on the listening socket failed here with "protocol
// not available" (Go may open it as multipath TCP), and the accepted
// sockets then had none.
func watchPeer(c net.Conn, timeout time.Duration) error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil // not TCP (in-memory connections of tests)
	}
	if err := tc.SetKeepAliveConfig(net.KeepAliveConfig{
		Enable: true, Idle: timeout / 2, Interval: timeout / 6, Count: 3,
	}); err != nil {
		return err
	}
	return setUserTimeout(tc, timeout)
}

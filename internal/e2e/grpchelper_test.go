package e2e_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// grpcHelper is the test binary as the workloads experiment's gRPC app
// (e2e.Options.GRPCHelper): "serve <addr>" serves the gRPC health service
// (the server and "app" SERVING) in plaintext, as an app behind a sidecar
// does; "check <addr> <service>" makes a unary Check and opens a Watch
// stream, and prints "check=<status> watch=<first status>".
func grpcHelper(args []string) int {
	switch {
	case len(args) == 2 && args[0] == "serve":
		l, err := net.Listen("tcp", args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		srv := grpc.NewServer()
		hs := health.NewServer()
		hs.SetServingStatus("app", healthpb.HealthCheckResponse_SERVING)
		healthpb.RegisterHealthServer(srv, hs)
		fmt.Println("serving gRPC on", args[1])
		if err := srv.Serve(l); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case len(args) == 3 && args[0] == "check":
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := grpc.NewClient("passthrough:///"+args[1], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fmt.Println("dial:", err)
			return 1
		}
		defer conn.Close()
		hc := healthpb.NewHealthClient(conn)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: args[2]})
		if err != nil {
			fmt.Println("check:", err)
			return 1
		}
		w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: args[2]})
		if err != nil {
			fmt.Println("watch:", err)
			return 1
		}
		first, err := w.Recv()
		if err != nil {
			fmt.Println("watch:", err)
			return 1
		}
		fmt.Printf("check=%s watch=%s\n", resp.GetStatus(), first.GetStatus())
		return 0
	}
	fmt.Fprintln(os.Stderr, "grpc-helper: serve <addr> | check <addr> <service>")
	return 2
}

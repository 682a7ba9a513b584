package load_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/load"
)

// floorServeEnv, when set, makes the test binary the floor server of
// BenchmarkTransportFloor (its value the address to listen on) instead of
// running tests.
const floorServeEnv = "MESHD_FLOOR_SERVE"

// BenchmarkTransportFloor measures what the transport alone costs, with no
// control plane behind it: a gRPC server in its own process, set up as
// meshd's xDS server is (TLS 1.3 with client certificates, no read buffer
// of gRPC's own, fixed flow-control windows), whose delta ADS streams each
// get one pre-encoded response of MESHD_FLOOR_FULL_KB KiB (default 1,780:
// what BenchmarkLoad's KiB-config/sidecar gives for a 1,000-service
// sidecar outside the mesh; 2,270 in it) and then, per round, one
// pre-encoded response of one endpoint set, which each client ACKs as the
// load tool's sidecars do. Every encoding is made once and shared by every
// stream: nothing is left but gRPC, TLS, the kernel and Go's scheduler.
//
// MESHD_LOAD_API=sotw makes them state-of-the-world streams, each request
// of which (ACKs included) names the MESHD_LOAD_SERVICES endpoint sets
// (default 1,000) the stream subscribes to, as an Envoy's EDS requests do;
// the server walks each request's fields without copying the names (the
// least a server that notices a changed subscription can do).
//
// MESHD_LOAD_SIDECARS streams (default 100) connecting at MESHD_LOAD_RATE
// a second (default 1,000), MESHD_LOAD_CHANGES rounds (default 20): it
// reports the server's CPU per round and for the connect phase, the time
// until every stream has its full response, and each round's delivery
// times (p50/p99/max), the figures BenchmarkLoad reports for meshd. What
// meshd costs above them is meshd's; what they cost is a floor no control
// plane on this transport goes below on this machine.
func BenchmarkTransportFloor(b *testing.B) {
	streams, rounds := envInt("MESHD_LOAD_SIDECARS", 100), envInt("MESHD_LOAD_CHANGES", 20)
	rate := envInt("MESHD_LOAD_RATE", 1000)
	var names []string // a SotW stream's subscription; nil: delta
	if os.Getenv("MESHD_LOAD_API") == "sotw" {
		for i := range envInt("MESHD_LOAD_SERVICES", 1000) {
			names = append(names, floorEndpoints(i).GetClusterName())
		}
	}
	dir := b.TempDir()
	roots, clientCert := floorPKI(b, dir)
	addr := freeAddr(b)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), floorServeEnv+"="+addr, "MESHD_FLOOR_DIR="+dir)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	tick, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("floor server not listening")
		}
	}
	pid := cmd.Process.Pid
	rssIdle, cpu0, _ := load.Proc(pid)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan time.Time, streams)
	full := make(chan error, streams)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	start := time.Now()
	pace := time.NewTicker(time.Second / time.Duration(rate))
	defer pace.Stop()
	for range streams {
		<-pace.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := floorClient(ctx, addr, clientCert, roots, names, full, got)
			if err != nil && ctx.Err() == nil {
				b.Error(err)
			}
		}()
	}
	for range streams {
		if err := <-full; err != nil {
			b.Fatal(err)
		}
	}
	timeToFull := time.Since(start)
	rssConnected, cpu1, _ := load.Proc(pid)

	var all []time.Duration
	for r := range rounds {
		t0 := time.Now()
		if _, err := tick.Write([]byte{byte(r)}); err != nil {
			b.Fatal(err)
		}
		for range streams {
			select {
			case at := <-got:
				all = append(all, max(at.Sub(t0), 0))
			case <-time.After(time.Minute):
				b.Fatalf("round %d: not every stream got its response", r)
			}
		}
		// The ACKs are the server's to read before the next round, as a
		// change's are before the next change at meshd's hold-off.
		time.Sleep(20 * time.Millisecond)
	}
	_, cpu2, _ := load.Proc(pid)
	slices.Sort(all)
	b.ReportMetric(timeToFull.Seconds(), "s-full-config")
	b.ReportMetric(float64((cpu1-cpu0).Milliseconds())/float64(streams), "ms-cpu-connect/stream")
	b.ReportMetric(float64((cpu2-cpu1).Microseconds())/1000/float64(rounds), "ms-cpu/round")
	b.ReportMetric(float64(load.Percentile(all, 50).Microseconds())/1000, "ms-conv-p50")
	b.ReportMetric(float64(load.Percentile(all, 99).Microseconds())/1000, "ms-conv-p99")
	b.ReportMetric(float64(all[len(all)-1].Microseconds())/1000, "ms-conv-max")
	b.Logf("transport floor, %d %s streams: full config in %s (server CPU %s, RSS %.1f MiB above idle); %d rounds: server CPU %s a round, delivery p50 %s p99 %s max %s",
		streams, map[bool]string{true: "delta", false: "sotw"}[names == nil], timeToFull.Round(time.Millisecond), cpu1-cpu0, float64(rssConnected-rssIdle)/(1<<20), rounds,
		(cpu2-cpu1)/time.Duration(rounds), load.Percentile(all, 50), load.Percentile(all, 99), all[len(all)-1])
}

// floorClient holds one stream, delta or (names set) SotW: it reports its
// full response on full and each later one's arrival on got, and ACKs each.
func floorClient(ctx context.Context, addr string, cert tls.Certificate, roots *x509.CertPool, names []string, full chan<- error, got chan<- time.Time) error {
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, MinVersion: tls.VersionTLS13,
		// The server's certificate names a SPIFFE ID, not a host: its chain
		// is checked against the roots, as the load tool does with meshd's.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
			return err
		}}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithStaticStreamWindowSize(256<<20), grpc.WithStaticConnWindowSize(256<<20),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		full <- err
		return nil
	}
	defer conn.Close()
	// Responses are read as the load tool's sidecars read them.
	stream, err := load.OpenADS(ctx, conn, names == nil)
	version := ""
	var resp load.Response
	// exchange sends the first request or the ACK of the last response
	// (nonce set) and returns the next response's nonce.
	exchange := func(nonce string) (string, error) {
		if err != nil {
			return "", err
		}
		var req proto.Message = &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce}
		if names == nil {
			delta := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: nonce}
			if nonce == "" {
				delta.ResourceNamesSubscribe = []string{"*"}
			}
			req = delta
		}
		if err := stream.Send(req); err != nil {
			return "", err
		}
		if err := stream.Recv(&resp); err != nil {
			return "", err
		}
		version = resp.Version
		return resp.Nonce, nil
	}
	nonce, err := exchange("")
	full <- err
	for err == nil {
		// The response's arrival, then its ACK (which asks for the next).
		if nonce != "full" {
			got <- time.Now()
		}
		nonce, err = exchange(nonce)
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// floorPKI writes the floor server's certificate, key and roots to dir and
// returns the roots and a client certificate.
func floorPKI(b *testing.B, dir string) (*x509.CertPool, tls.Certificate) {
	root, err := ca.NewRoot(rand.Reader, time.Now(), "cluster.local")
	if err != nil {
		b.Fatal(err)
	}
	issuer, err := ca.NewInternal(ca.InternalConfig{Authority: root})
	if err != nil {
		b.Fatal(err)
	}
	issue := func(sa string) *ca.Certificate {
		key, err := ca.GenerateKey(rand.Reader, ca.KeyECDSAP256)
		if err != nil {
			b.Fatal(err)
		}
		c, err := issuer.Issue(context.Background(), ca.Request{Identity: ca.Identity{TrustDomain: "cluster.local", Namespace: "floor", ServiceAccount: sa}, Key: key})
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	server, client := issue("server"), issue("client")
	for name, data := range map[string][]byte{"chain.pem": server.ChainPEM, "key.pem": server.KeyPEM, "roots.pem": server.BundlePEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(client.BundlePEM)
	kp, err := tls.X509KeyPair(client.ChainPEM, client.KeyPEM)
	if err != nil {
		b.Fatal(err)
	}
	return roots, kp
}

// serveFloor is the floor server's process: it serves addr until its
// standard input ends, starting a round at each byte read.
func serveFloor(addr string) int {
	if err := runFloor(addr, os.Getenv("MESHD_FLOOR_DIR"), envInt("MESHD_FLOOR_FULL_KB", 1780)); err != nil {
		fmt.Fprintln(os.Stderr, "floor server:", err)
		return 1
	}
	return 0
}

func runFloor(addr, dir string, fullKB int) error {
	kp, err := tls.LoadX509KeyPair(filepath.Join(dir, "chain.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		return err
	}
	bundle, err := os.ReadFile(filepath.Join(dir, "roots.pem"))
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundle)
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	// As xds.NewServer sets meshd's up (see there for why).
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{kp},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: roots})),
		grpc.ReadBufferSize(0), grpc.StaticStreamWindowSize(1<<20), grpc.StaticConnWindowSize(1<<20),
		grpc.ForceServerCodecV2(rawCodec{}))
	fs := &floorServer{rounds: newRounds(), sotwRounds: newRounds()}
	if fs.full, err = floorResponse(fullKB<<10, "full"); err != nil {
		return err
	}
	if fs.sotwFull, err = floorSotwResponse(fullKB<<10, "full"); err != nil {
		return err
	}
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(srv, fs)
	go func() {
		in := bufio.NewReader(os.Stdin)
		for {
			if _, err := in.ReadByte(); err != nil {
				srv.Stop()
				return
			}
			nonce := strconv.Itoa(fs.rounds.count() + 1)
			resp, err := floorResponse(0, nonce)
			if err != nil {
				srv.Stop()
				return
			}
			sotw, err := floorSotwResponse(0, nonce)
			if err != nil {
				srv.Stop()
				return
			}
			fs.rounds.next(resp)
			fs.sotwRounds.next(sotw)
		}
	}()
	return srv.Serve(lis)
}

// floorResponse encodes a delta EDS response of about size bytes of
// endpoint sets (at least one, of ten endpoints) with nonce.
func floorResponse(size int, nonce string) (raw, error) {
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: resourcev3.EndpointType, Nonce: nonce, SystemVersionInfo: nonce}
	for i, n := 0, 0; n == 0 || n < size; i++ {
		cla := floorEndpoints(i)
		a, err := anypb.New(cla)
		if err != nil {
			return nil, err
		}
		r := &discoveryv3.Resource{Name: cla.GetClusterName(), Version: nonce, Resource: a}
		resp.Resources = append(resp.Resources, r)
		n += proto.Size(r)
	}
	return proto.Marshal(resp)
}

// floorEndpoints is the i-th endpoint set: ten endpoints in the mesh (the
// mutual-TLS mark on their locality), as meshd sends a service's.
func floorEndpoints(i int) *endpointv3.ClusterLoadAssignment {
	mark, _ := structpb.NewStruct(map[string]any{"tls": "mtls"})
	loc := &endpointv3.LocalityLbEndpoints{Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.transport_socket_match": mark}}}
	for j := range 10 {
		n := i*10 + j
		loc.LbEndpoints = append(loc.LbEndpoints, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: fmt.Sprintf("198.18.%d.%d", n/250%256, n%250+1), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}}}}})
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: fmt.Sprintf("outbound|80|svc%d.floor", i), Endpoints: []*endpointv3.LocalityLbEndpoints{loc}}
}

// floorSotwResponse is floorResponse's endpoint sets in a SotW response
// (one of EDS may hold only the sets that changed).
func floorSotwResponse(size int, nonce string) (raw, error) {
	resp := &discoveryv3.DiscoveryResponse{TypeUrl: resourcev3.EndpointType, Nonce: nonce, VersionInfo: nonce}
	for i, n := 0, 0; n == 0 || n < size; i++ {
		a, err := anypb.New(floorEndpoints(i))
		if err != nil {
			return nil, err
		}
		resp.Resources = append(resp.Resources, a)
		n += proto.Size(a)
	}
	return proto.Marshal(resp)
}

// wireRequest is what the floor server reads of a request: its nonce, and
// how many names it holds. The names are walked, not copied.
type wireRequest struct {
	delta bool // a DeltaDiscoveryRequest (else a DiscoveryRequest)
	nonce string
	names int
}

func (r *wireRequest) decode(b []byte) error {
	r.nonce, r.names = "", 0
	nonceField := protowire.Number(5) // response_nonce
	if r.delta {
		nonceField = 6
	}
	return load.EachBytesField(b, func(num protowire.Number, v []byte) error {
		switch num {
		case 3: // resource_names, resource_names_subscribe
			r.names++
		case nonceField:
			r.nonce = string(v)
		}
		return nil
	})
}

// raw is an encoded message, sent as it is.
type raw []byte

// rawCodec sends raw as it is and decodes requests with protobuf.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	r, ok := v.(raw)
	if !ok {
		return nil, fmt.Errorf("floor: cannot send %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(r)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*wireRequest)
	if !ok {
		return fmt.Errorf("floor: cannot decode into %T", v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return r.decode(buf.ReadOnlyData())
}

// rounds hands each stream every round's response in turn.
type rounds struct {
	mu    sync.Mutex
	resps []raw
	moved chan struct{} // closed when a round starts
}

func newRounds() *rounds { return &rounds{moved: make(chan struct{})} }

func (r *rounds) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.resps)
}

func (r *rounds) next(resp raw) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resps = append(r.resps, resp)
	close(r.moved)
	r.moved = make(chan struct{})
}

// after waits for round i (from 0) to start and returns its response.
func (r *rounds) after(ctx context.Context, i int) (raw, error) {
	for {
		r.mu.Lock()
		if i < len(r.resps) {
			resp := r.resps[i]
			r.mu.Unlock()
			return resp, nil
		}
		moved := r.moved
		r.mu.Unlock()
		select {
		case <-moved:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

type floorServer struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	full, sotwFull     raw
	rounds, sotwRounds *rounds
}

func (fs *floorServer) DeltaAggregatedResources(stream grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	return fs.serve(stream, true, fs.full, fs.rounds)
}

func (fs *floorServer) StreamAggregatedResources(stream grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	return fs.serve(stream, false, fs.sotwFull, fs.sotwRounds)
}

// serve answers the stream's first request with full, and each ACK with
// the next round's response once it starts.
func (fs *floorServer) serve(stream grpc.ServerStream, delta bool, full raw, rounds *rounds) error {
	req := &wireRequest{delta: delta}
	if err := stream.RecvMsg(req); err != nil {
		return err
	}
	// Rounds started before the stream's full response are not its.
	i := rounds.count()
	resp := full
	for {
		if err := stream.SendMsg(resp); err != nil {
			return err
		}
		if err := stream.RecvMsg(req); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		var err error
		if resp, err = rounds.after(stream.Context(), i); err != nil {
			return err
		}
		i++
	}
}

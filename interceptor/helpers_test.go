package interceptor_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/testing/testpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// The tests run the interceptors against go-grpc-middleware's own test
// service (testpb) behind its auth server interceptor: a server no one here
// wrote. Test-only interceptors around it record what arrives and inject
// faults; the auth function accepts exactly one token at a time, which the
// tests swap to simulate expiry and rotation.

const (
	mdTestID    = "x-test-id"    // groups the server's records by test
	mdFailAfter = "x-fail-after" // server streams: fail with Unauthenticated after n messages
	mdRejectEOF = "x-reject-eof" // client streams: the first stream with this value fails with Unauthenticated at the client's CloseSend
)

// pingService is upstream's TestPingService with Ping replaced: upstream's
// Ping writes a package-level int on every call, which races under -race
// when Pings run concurrently.
type pingService struct {
	testpb.TestPingService
}

func (*pingService) Ping(_ context.Context, req *testpb.PingRequest) (*testpb.PingResponse, error) {
	return &testpb.PingResponse{Value: req.GetValue()}, nil
}

// callRecord is one RPC attempt as the server saw it, before authentication.
type callRecord struct {
	method string
	testID string
	auth   []string // every value of the authorization header
	md     metadata.MD
}

// streamRecord is one authenticated stream: the values the handler received,
// in order, and whether it saw the client's CloseSend (io.EOF).
type streamRecord struct {
	mu     sync.Mutex
	values []string
	eof    bool
}

func (r *streamRecord) snapshot() ([]string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.values...), r.eof
}

type testServer struct {
	mu         sync.Mutex
	accepted   string // the only token accepted; "" accepts none
	rejectAll  bool
	calls      []callRecord
	streams    map[string][]*streamRecord // by test ID
	rejectedAt map[string]bool            // mdRejectEOF values already used

	rejections atomic.Int64 // Unauthenticated answers from the auth function
	addr       string

	// reply, when set, is how the auth function rejects a token it does
	// not accept (guarded by mu).
	reply *challengeReply
}

// challengeReply is a rejection with a code of the test's choosing and a
// www-authenticate value in the header or the trailer metadata, as a
// resource server behind Envoy's jwt_authn sends it, with a status detail
// that the client must get back.
type challengeReply struct {
	code      codes.Code
	value     string // "": no challenge
	inTrailer bool
}

func (s *testServer) setReply(r *challengeReply) {
	s.mu.Lock()
	s.reply = r
	s.mu.Unlock()
}

func (r *challengeReply) reject(ctx context.Context) error {
	if r.value != "" {
		md := metadata.Pairs("www-authenticate", r.value)
		set := grpc.SetHeader
		if r.inTrailer {
			set = grpc.SetTrailer
		}
		if err := set(ctx, md); err != nil {
			return status.Errorf(codes.Internal, "setting the challenge: %v", err)
		}
	}
	st, err := status.New(r.code, "token not accepted").WithDetails(&testpb.PingResponse{Value: "server detail"})
	if err != nil {
		return status.Errorf(codes.Internal, "adding the detail: %v", err)
	}
	return st.Err()
}

func (s *testServer) accept(token string) {
	s.mu.Lock()
	s.accepted = token
	s.mu.Unlock()
}

func (s *testServer) setRejectAll(v bool) {
	s.mu.Lock()
	s.rejectAll = v
	s.mu.Unlock()
}

func (s *testServer) authenticate(ctx context.Context) (context.Context, error) {
	tok, err := auth.AuthFromMD(ctx, "bearer")
	if err != nil {
		s.rejections.Add(1)
		return nil, err
	}
	s.mu.Lock()
	ok := !s.rejectAll && s.accepted != "" && tok == s.accepted
	reply := s.reply
	s.mu.Unlock()
	if !ok {
		s.rejections.Add(1)
		if reply != nil {
			return nil, reply.reject(ctx)
		}
		return nil, status.Error(codes.Unauthenticated, "token not accepted")
	}
	return ctx, nil
}

func (s *testServer) record(ctx context.Context, method string) {
	md, _ := metadata.FromIncomingContext(ctx)
	rec := callRecord{method: method, auth: md.Get("authorization"), md: md}
	if v := md.Get(mdTestID); len(v) > 0 {
		rec.testID = v[0]
	}
	s.mu.Lock()
	s.calls = append(s.calls, rec)
	s.mu.Unlock()
}

// callsFor returns the attempts of method in test id as the server saw them.
func (s *testServer) callsFor(id, method string) []callRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []callRecord
	for _, c := range s.calls {
		if c.testID == id && c.method == method {
			out = append(out, c)
		}
	}
	return out
}

func (s *testServer) allCalls() []callRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]callRecord(nil), s.calls...)
}

func (s *testServer) streamsFor(id string) []*streamRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*streamRecord(nil), s.streams[id]...)
}

func (s *testServer) unaryRecorder(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	s.record(ctx, info.FullMethod)
	return handler(ctx, req)
}

func (s *testServer) streamRecorder(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	s.record(ss.Context(), info.FullMethod)
	return handler(srv, ss)
}

// streamFaults runs inside authentication: it records what an
// authenticated stream receives and injects the faults asked for in the
// request metadata.
func (s *testServer) streamFaults(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	md, _ := metadata.FromIncomingContext(ss.Context())
	w := &faultStream{ServerStream: ss, rec: &streamRecord{}, failAfter: -1}
	if v := md.Get(mdTestID); len(v) > 0 {
		s.mu.Lock()
		s.streams[v[0]] = append(s.streams[v[0]], w.rec)
		s.mu.Unlock()
	}
	if v := md.Get(mdFailAfter); len(v) > 0 {
		n, err := strconv.Atoi(v[0])
		if err != nil {
			return status.Error(codes.InvalidArgument, "bad "+mdFailAfter)
		}
		w.failAfter = n
	}
	if v := md.Get(mdRejectEOF); len(v) > 0 {
		s.mu.Lock()
		w.rejectEOF = !s.rejectedAt[v[0]]
		s.rejectedAt[v[0]] = true
		s.mu.Unlock()
	}
	return handler(srv, w)
}

type faultStream struct {
	grpc.ServerStream
	rec       *streamRecord
	failAfter int // fail SendMsg with Unauthenticated after this many messages; -1: never
	sent      int
	rejectEOF bool
}

func (f *faultStream) SendMsg(m any) error {
	if f.failAfter >= 0 && f.sent >= f.failAfter {
		return status.Error(codes.Unauthenticated, "token expired during the stream")
	}
	f.sent++
	return f.ServerStream.SendMsg(m)
}

func (f *faultStream) RecvMsg(m any) error {
	err := f.ServerStream.RecvMsg(m)
	f.rec.mu.Lock()
	defer f.rec.mu.Unlock()
	switch {
	case err == nil:
		if v, ok := m.(interface{ GetValue() string }); ok {
			f.rec.values = append(f.rec.values, v.GetValue())
		}
	case errors.Is(err, io.EOF):
		f.rec.eof = true
		if f.rejectEOF {
			return status.Error(codes.Unauthenticated, "token rejected after reading the stream")
		}
	}
	return err
}

// serverCert makes a self-signed certificate for 127.0.0.1 and returns the
// server's TLS certificate and a pool that trusts it.
func serverCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "interceptor test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// startServer serves the test service on 127.0.0.1 (TLS unless plain) and
// returns it with the transport credentials a client needs.
func startServer(t testing.TB, plain bool) (*testServer, credentials.TransportCredentials) {
	t.Helper()
	s := &testServer{streams: map[string][]*streamRecord{}, rejectedAt: map[string]bool{}}
	needsToken := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
		return c.FullMethod() != testpb.TestService_PingEmpty_FullMethodName
	})
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(
			s.unaryRecorder,
			selector.UnaryServerInterceptor(auth.UnaryServerInterceptor(s.authenticate), needsToken),
		),
		grpc.ChainStreamInterceptor(
			s.streamRecorder,
			selector.StreamServerInterceptor(auth.StreamServerInterceptor(s.authenticate), needsToken),
			s.streamFaults,
		),
	}
	clientCreds := insecure.NewCredentials()
	if !plain {
		cert, pool := serverCert(t)
		opts = append(opts, grpc.Creds(credentials.NewServerTLSFromCert(&cert)))
		clientCreds = credentials.NewClientTLSFromCert(pool, "127.0.0.1")
	}
	srv := grpc.NewServer(opts...)
	testpb.RegisterTestServiceServer(srv, &pingService{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = lis.Addr().String()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, clientCreds
}

// dial connects to s with the given dial options and returns a client.
func dial(t testing.TB, s *testServer, creds credentials.TransportCredentials, opts ...grpc.DialOption) testpb.TestServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(s.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return testpb.NewTestServiceClient(conn)
}

// rotatingRefresher mints "tok-1", "tok-2", ... and makes the server accept
// only the newest, as an authorization server that rotates tokens would.
type rotatingRefresher struct {
	srv   *testServer
	n     atomic.Int64
	block chan struct{} // if not nil, each Refresh waits for a value or close
}

func (r *rotatingRefresher) Refresh(ctx context.Context, _ *tokensource.Token) (*tokensource.Token, error) {
	if r.block != nil {
		select {
		case <-r.block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	tok := &tokensource.Token{AccessToken: fmt.Sprintf("tok-%d", r.n.Add(1))}
	r.srv.accept(tok.AccessToken)
	return tok, nil
}

// newSource returns a real Source whose first token the server accepts.
func newSource(t testing.TB, r *rotatingRefresher, opts ...tokensource.Option) *tokensource.Source {
	t.Helper()
	src := tokensource.New(r, opts...)
	t.Cleanup(func() { _ = src.Close() })
	if _, err := src.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	return src
}

// fakeSource is a minimal TokenSource that counts calls. Refresh replaces
// the current token (under a mutex, so concurrent callers share one
// refresh) unless stale is already outdated.
type fakeSource struct {
	mu       sync.Mutex
	cur      *tokensource.Token
	tokenErr error
	next     func() (*tokensource.Token, error)

	tokens, refreshes atomic.Int64
}

func (f *fakeSource) Token(context.Context) (*tokensource.Token, error) {
	f.tokens.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tokenErr != nil {
		return nil, f.tokenErr
	}
	return f.cur, nil
}

func (f *fakeSource) Refresh(_ context.Context, stale *tokensource.Token) (*tokensource.Token, error) {
	f.refreshes.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if stale != f.cur || f.next == nil {
		return f.cur, nil
	}
	t, err := f.next()
	if err != nil {
		return nil, err
	}
	f.cur = t
	return t, nil
}

// withID returns ctx carrying test ID id in its outgoing metadata.
func withID(ctx context.Context, id string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, mdTestID, id)
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantCode fails the test unless err has code c.
func wantCode(t testing.TB, err error, c codes.Code) {
	t.Helper()
	if got := status.Code(err); got != c {
		t.Fatalf("status.Code(err) = %v, want %v (err: %v)", got, c, err)
	}
}

// dialOpts is a shorthand for interceptor.DialOptions.
func dialOpts(src interceptor.TokenSource, opts ...interceptor.Option) []grpc.DialOption {
	return interceptor.DialOptions(src, opts...)
}

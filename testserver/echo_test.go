package testserver_test

import (
	"context"
	"errors"
	"io"
	"slices"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
)

// transports are the four ways a test can serve the server.
var transports = []struct {
	name string
	opts []testserver.StartOption
}{
	{"tcp", nil},
	{"tcp+tls", []testserver.StartOption{testserver.TLS()}},
	{"bufconn", []testserver.StartOption{testserver.Bufconn()}},
	{"bufconn+tls", []testserver.StartOption{testserver.Bufconn(), testserver.TLS()}},
}

func TestEchoMethodsSucceedWithValidToken(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			srv := testserver.New()
			ep, c := start(t, srv, tr.opts...)
			tok := login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
			ctx := bearer(t.Context(), tok.GetAccessToken())

			var p peer.Peer
			resp, err := c.echo.Echo(ctx, &echov1.EchoRequest{Message: "hello"}, grpc.Peer(&p))
			if err != nil {
				t.Fatalf("Echo: %v", err)
			}
			if resp.GetMessage() != "hello" || resp.GetUser() != testserver.DefaultUser {
				t.Errorf("Echo = %q for %q, want %q for %q", resp.GetMessage(), resp.GetUser(), "hello", testserver.DefaultUser)
			}
			_, isTLS := p.AuthInfo.(credentials.TLSInfo)
			if wantTLS := ep.CertificatePEM() != nil; isTLS != wantTLS {
				t.Errorf("connection uses TLS = %v, want %v", isTLS, wantTLS)
			}

			ss, err := c.echo.ServerStreamEcho(ctx, &echov1.ServerStreamEchoRequest{Message: "s", Count: 3})
			if err != nil {
				t.Fatalf("ServerStreamEcho: %v", err)
			}
			var idx []int32
			for {
				m, err := ss.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("ServerStreamEcho Recv: %v", err)
				}
				if m.GetMessage() != "s" {
					t.Errorf("ServerStreamEcho message = %q, want %q", m.GetMessage(), "s")
				}
				idx = append(idx, m.GetIndex())
			}
			if want := []int32{0, 1, 2}; !slices.Equal(idx, want) {
				t.Errorf("ServerStreamEcho indexes = %v, want %v", idx, want)
			}

			cs, err := c.echo.ClientStreamEcho(ctx)
			if err != nil {
				t.Fatalf("ClientStreamEcho: %v", err)
			}
			sent := []string{"a", "b", "c"}
			for _, m := range sent {
				if err := cs.Send(&echov1.ClientStreamEchoRequest{Message: m}); err != nil {
					t.Fatalf("ClientStreamEcho Send: %v", err)
				}
			}
			cresp, err := cs.CloseAndRecv()
			if err != nil {
				t.Fatalf("ClientStreamEcho CloseAndRecv: %v", err)
			}
			if cresp.GetCount() != 3 || !slices.Equal(cresp.GetMessages(), sent) {
				t.Errorf("ClientStreamEcho = %d %v, want 3 %v", cresp.GetCount(), cresp.GetMessages(), sent)
			}

			bs, err := c.echo.BidiStreamEcho(ctx)
			if err != nil {
				t.Fatalf("BidiStreamEcho: %v", err)
			}
			for i, m := range sent {
				if err := bs.Send(&echov1.BidiStreamEchoRequest{Message: m}); err != nil {
					t.Fatalf("BidiStreamEcho Send: %v", err)
				}
				r, err := bs.Recv()
				if err != nil {
					t.Fatalf("BidiStreamEcho Recv: %v", err)
				}
				if r.GetMessage() != m || r.GetIndex() != int32(i) {
					t.Errorf("BidiStreamEcho = %q #%d, want %q #%d", r.GetMessage(), r.GetIndex(), m, i)
				}
			}
			if err := bs.CloseSend(); err != nil {
				t.Fatalf("BidiStreamEcho CloseSend: %v", err)
			}
			if _, err := bs.Recv(); !errors.Is(err, io.EOF) {
				t.Errorf("BidiStreamEcho final Recv = %v, want io.EOF", err)
			}

			got := srv.Counters()
			for _, m := range []string{
				echov1.EchoService_Echo_FullMethodName,
				echov1.EchoService_ServerStreamEcho_FullMethodName,
				echov1.EchoService_ClientStreamEcho_FullMethodName,
				echov1.EchoService_BidiStreamEcho_FullMethodName,
			} {
				if got.RPCs[m] != 1 {
					t.Errorf("Counters().RPCs[%s] = %d, want 1", m, got.RPCs[m])
				}
			}
			if got.Unauthenticated != 0 || got.RequestsWithToken != 4 || got.RequestsWithoutToken != 1 {
				t.Errorf("Counters() = %+v, want 0 Unauthenticated, 4 requests with a token, 1 (Login) without", got)
			}
		})
	}
}

// TestEveryMethodRejectsBadToken opens each EchoService method without a
// token, with a malformed header and with an unknown token.
func TestEveryMethodRejectsBadToken(t *testing.T) {
	srv := testserver.New()
	_, c := start(t, srv)
	calls := map[string]func(ctx context.Context) error{
		"Echo": func(ctx context.Context) error {
			_, err := c.echo.Echo(ctx, &echov1.EchoRequest{Message: "x"})
			return err
		},
		"ServerStreamEcho": func(ctx context.Context) error {
			s, err := c.echo.ServerStreamEcho(ctx, &echov1.ServerStreamEchoRequest{Message: "x", Count: 1})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		},
		"ClientStreamEcho": func(ctx context.Context) error {
			s, err := c.echo.ClientStreamEcho(ctx)
			if err != nil {
				return err
			}
			_, err = s.CloseAndRecv()
			return err
		},
		"BidiStreamEcho": func(ctx context.Context) error {
			s, err := c.echo.BidiStreamEcho(ctx)
			if err != nil {
				return err
			}
			if err := s.CloseSend(); err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		},
	}
	headers := map[string]func(context.Context) context.Context{
		"none":    func(ctx context.Context) context.Context { return ctx },
		"unknown": func(ctx context.Context) context.Context { return bearer(ctx, "at_NOTISSUED") },
		"basic": func(ctx context.Context) context.Context {
			return metadata.AppendToOutgoingContext(ctx, "authorization", "Basic dXNlcjpwYXNz")
		},
		"no-scheme": func(ctx context.Context) context.Context {
			return metadata.AppendToOutgoingContext(ctx, "authorization", "at_NOTISSUED")
		},
	}
	var n int64
	for hname, h := range headers {
		for cname, call := range calls {
			err := call(h(t.Context()))
			if status.Code(err) != codes.Unauthenticated {
				t.Errorf("%s with header %s: %v, want code Unauthenticated", cname, hname, err)
			}
			n++
		}
	}
	got := srv.Counters()
	if got.Unauthenticated != n {
		t.Errorf("Counters().Unauthenticated = %d, want %d", got.Unauthenticated, n)
	}
	if got.RequestsWithoutToken != 4 || got.RequestsWithToken != n-4 {
		t.Errorf("Counters() requests without/with token = %d/%d, want 4/%d", got.RequestsWithoutToken, got.RequestsWithToken, n-4)
	}
}

func TestServerStreamEchoFailAfter(t *testing.T) {
	srv := testserver.New()
	_, c := start(t, srv)
	tok, err := srv.IssueToken("streamer")
	if err != nil {
		t.Fatal(err)
	}
	ctx := bearer(t.Context(), tok.AccessToken)
	for _, tc := range []struct {
		name                       string
		count, failAfter, failCode int32
		wantMsgs                   int
		wantCode                   codes.Code
	}{
		{"no fault", 4, 0, 0, 4, codes.OK},
		{"unauthenticated after 2", 4, 2, 0, 2, codes.Unauthenticated},
		{"unavailable after 1", 4, 1, int32(codes.Unavailable), 1, codes.Unavailable},
		{"fail after more than count", 2, 5, 0, 2, codes.Unauthenticated},
		{"count too large", testserver.MaxServerStreamCount + 1, 0, 0, 0, codes.InvalidArgument},
		{"negative count", -1, 0, 0, 0, codes.InvalidArgument},
		{"bad fail code", 1, 1, 99, 0, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := c.echo.ServerStreamEcho(ctx, &echov1.ServerStreamEchoRequest{
				Message: "m", Count: tc.count, FailAfter: tc.failAfter, FailCode: tc.failCode,
			})
			if err != nil {
				t.Fatal(err)
			}
			msgs := 0
			for {
				_, err = s.Recv()
				if err != nil {
					break
				}
				msgs++
			}
			if errors.Is(err, io.EOF) {
				err = nil
			}
			if msgs != tc.wantMsgs || status.Code(err) != tc.wantCode {
				t.Errorf("got %d messages then %v, want %d then code %v", msgs, err, tc.wantMsgs, tc.wantCode)
			}
		})
	}
}

func TestClientStreamEchoLimit(t *testing.T) {
	srv := testserver.New()
	_, c := start(t, srv)
	tok, err := srv.IssueToken("streamer")
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.echo.ClientStreamEcho(bearer(t.Context(), tok.AccessToken))
	if err != nil {
		t.Fatal(err)
	}
	for range testserver.MaxClientStreamMessages + 1 {
		if err := s.Send(&echov1.ClientStreamEchoRequest{Message: "x"}); err != nil {
			break // the server already answered; CloseAndRecv reports why
		}
	}
	if _, err := s.CloseAndRecv(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("CloseAndRecv after %d messages = %v, want code ResourceExhausted", testserver.MaxClientStreamMessages+1, err)
	}
}

// TestRejectionIsTrailersOnly checks that a rejected stream ends without
// response headers (a trailers-only response, sent before any handler ran),
// while an accepted one receives headers.
func TestRejectionIsTrailersOnly(t *testing.T) {
	srv := testserver.New()
	_, c := start(t, srv)
	good := mustIssue(t, srv)
	for _, tc := range []struct {
		name        string
		token       string
		wantHeaders bool
		wantCode    codes.Code
	}{
		{"valid token", good, true, codes.OK},
		{"unknown token", "at_NOTISSUED", false, codes.Unauthenticated},
	} {
		s, err := c.echo.ServerStreamEcho(bearer(t.Context(), tc.token), &echov1.ServerStreamEchoRequest{Message: "m", Count: 1})
		if err != nil {
			t.Fatal(err)
		}
		md, err := s.Header()
		if err != nil {
			t.Fatalf("%s: Header: %v", tc.name, err)
		}
		if (md != nil) != tc.wantHeaders {
			t.Errorf("%s: response headers received = %v, want %v", tc.name, md != nil, tc.wantHeaders)
		}
		for err == nil {
			_, err = s.Recv()
		}
		if errors.Is(err, io.EOF) {
			err = nil
		}
		if status.Code(err) != tc.wantCode {
			t.Errorf("%s: stream ended with %v, want code %v", tc.name, err, tc.wantCode)
		}
	}
}

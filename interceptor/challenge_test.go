package interceptor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/testing/testpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// A server behind go-grpc-middleware's auth interceptor rejects the token
// with each code, a www-authenticate challenge in the header or the
// trailer metadata, and a status detail. A challenge a new token answers
// (invalid_token, no error code, another scheme's) is refreshed and retried
// as any rejection; insufficient_scope and insufficient_user_authentication
// are returned at once, with the server's code and detail, matching the
// tokensource sentinel, without a refresh; a challenge on a code that does
// not refuse a token is not read.
func TestServerChallenge(t *testing.T) {
	const (
		scope  = `Bearer realm="api", error="insufficient_scope", error_description="Insufficient Scope", scope="echo:admin"`
		stepUp = `Bearer error="insufficient_user_authentication", acr_values="gold silver", max_age=300`
	)
	type outcome int
	const (
		retried    outcome = iota // refreshed once, retried, succeeded
		notRetried                // the server's error as is, no refresh
		scopeErr                  // ErrInsufficientScope, no refresh
		stepUpErr                 // ErrStepUpRequired, no refresh
	)
	cases := []struct {
		code  codes.Code
		value string
		want  outcome
	}{
		{codes.Unauthenticated, `Bearer realm="api", error="invalid_token", error_description="'exp' claim timestamp check failed", DPoP algs="RS256 ES256"`, retried},
		{codes.Unauthenticated, `Bearer realm="api"`, retried},
		{codes.Unauthenticated, `DPoP algs="ES256", error="insufficient_scope", scope="echo:admin"`, retried},
		{codes.Unauthenticated, scope, scopeErr},
		{codes.Unauthenticated, stepUp, stepUpErr},
		{codes.PermissionDenied, `Bearer error="invalid_token"`, notRetried},
		{codes.PermissionDenied, scope, scopeErr},
		{codes.PermissionDenied, stepUp, stepUpErr},
		{codes.Unavailable, scope, notRetried},
	}
	kinds := map[string]func(ctx context.Context, c testpb.TestServiceClient) error{
		"unary": func(ctx context.Context, c testpb.TestServiceClient) error {
			_, err := c.Ping(ctx, &testpb.PingRequest{Value: "v"})
			return err
		},
		"server-stream": func(ctx context.Context, c testpb.TestServiceClient) error {
			st, err := c.PingList(ctx, &testpb.PingListRequest{Value: "v"})
			if err != nil {
				return err
			}
			for {
				if _, err := st.Recv(); err != nil {
					if err == io.EOF {
						return nil
					}
					return err
				}
			}
		},
		// Header before Recv: the wrapper finds out how the stream ended
		// there. (With the challenge in the header metadata the server sends
		// a header before its error, and a stream whose Header returned one
		// is not reopened, see the package documentation: this kind runs
		// with the challenge in the trailer only.)
		"bidi-header": func(ctx context.Context, c testpb.TestServiceClient) error {
			st, err := c.PingStream(ctx)
			if err != nil {
				return err
			}
			if err := st.Send(&testpb.PingStreamRequest{Value: "v"}); err != nil && err != io.EOF {
				return err
			}
			if _, err := st.Header(); err != nil {
				return err
			}
			_, err = st.Recv()
			_ = st.CloseSend()
			return err
		},
		"bidi": func(ctx context.Context, c testpb.TestServiceClient) error {
			st, err := c.PingStream(ctx)
			if err != nil {
				return err
			}
			if err := st.Send(&testpb.PingStreamRequest{Value: "v"}); err != nil && err != io.EOF {
				return err
			}
			_, err = st.Recv()
			_ = st.CloseSend()
			return err
		},
	}
	for kind, call := range kinds {
		for _, tc := range cases {
			for _, inTrailer := range []bool{false, true} {
				if kind == "bidi-header" && !inTrailer {
					continue
				}
				where := "header"
				if inTrailer {
					where = "trailer"
				}
				value := strings.SplitN(tc.value, ",", 2)[0]
				t.Run(fmt.Sprintf("%s/%v/%s/%s", kind, tc.code, where, value), func(t *testing.T) {
					s, creds := startServer(t, false)
					r := &rotatingRefresher{srv: s}
					src := newSource(t, r, tokensource.WithMinRefreshInterval(0))
					client := dial(t, s, creds, dialOpts(src)...)
					s.accept("revoked")
					s.setReply(&challengeReply{code: tc.code, value: tc.value, inTrailer: inTrailer})
					ctx := withID(testCtx(t), t.Name())

					err := call(ctx, client)
					attempts := len(s.callsFor(t.Name(), methodFor(kind)))
					refreshes := r.n.Load() - 1
					if tc.want == retried {
						if err != nil || refreshes != 1 || attempts != 2 {
							t.Fatalf("err %v, %d refreshes, %d attempts: want success after 1 refresh and 2 attempts", err, refreshes, attempts)
						}
						return
					}
					wantCode(t, err, tc.code)
					if refreshes != 0 || attempts != 1 {
						t.Errorf("%d refreshes, %d attempts: want none and 1", refreshes, attempts)
					}
					details := status.Convert(err).Details()
					if len(details) != 1 || !proto.Equal(details[0].(proto.Message), &testpb.PingResponse{Value: "server detail"}) {
						t.Errorf("details %v: want the server's", details)
					}
					switch tc.want {
					case notRetried:
						if errors.Is(err, tokensource.ErrInsufficientScope) || errors.Is(err, tokensource.ErrStepUpRequired) {
							t.Errorf("err %v matches a challenge sentinel", err)
						}
					case scopeErr:
						var se *tokensource.ScopeError
						if !errors.Is(err, tokensource.ErrInsufficientScope) || !errors.As(err, &se) || se.Scope != "echo:admin" {
							t.Fatalf("err %v: want ErrInsufficientScope for echo:admin", err)
						}
						if msg := status.Convert(err).Message(); !strings.HasPrefix(msg, "token not accepted") || !strings.Contains(msg, `"echo:admin"`) {
							t.Errorf("message %q: want the server's, naming the scope", msg)
						}
					case stepUpErr:
						var su *tokensource.StepUpError
						if !errors.Is(err, tokensource.ErrStepUpRequired) || !errors.As(err, &su) ||
							su.ACRValues != "gold silver" || !su.HasMaxAge || su.MaxAge != 300*time.Second {
							t.Fatalf("err %v (%+v): want ErrStepUpRequired with acr_values and max_age", err, su)
						}
					}
				})
			}
		}
	}
}

func methodFor(kind string) string {
	switch kind {
	case "unary":
		return testpb.TestService_Ping_FullMethodName
	case "server-stream":
		return testpb.TestService_PingList_FullMethodName
	}
	return testpb.TestService_PingStream_FullMethodName
}

// The caller's own grpc.Header and grpc.Trailer options still receive the
// server's metadata beside the interceptor's.
func TestCallerMetadataOptionsKept(t *testing.T) {
	s, creds := startServer(t, false)
	r := &rotatingRefresher{srv: s}
	src := newSource(t, r)
	client := dial(t, s, creds, dialOpts(src)...)
	s.accept("revoked")
	s.setReply(&challengeReply{code: codes.PermissionDenied, value: `Bearer error="insufficient_scope", scope="a"`, inTrailer: true})
	var header, trailer metadata.MD
	_, err := client.Ping(withID(testCtx(t), t.Name()), &testpb.PingRequest{Value: "v"}, grpc.Header(&header), grpc.Trailer(&trailer))
	if !errors.Is(err, tokensource.ErrInsufficientScope) {
		t.Fatalf("err = %v, want ErrInsufficientScope", err)
	}
	if got := trailer.Get("www-authenticate"); len(got) != 1 {
		t.Errorf("the caller's trailer %v lacks the challenge", trailer)
	}
}

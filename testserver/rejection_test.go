package testserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	authv1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/auth/v1"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
)

// logRecord is one line of a slog JSON handler.
type logRecord struct {
	Level  string `json:"level"`
	Msg    string `json:"msg"`
	Method string `json:"method"`
	Reason string `json:"reason"`
}

// jsonLog collects a server's log at the default level (Info) as JSON lines.
type jsonLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *jsonLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *jsonLog) logger() *slog.Logger { return slog.New(slog.NewJSONHandler(l, nil)) }

// take returns the records written since the last take, and the raw text.
func (l *jsonLog) take(t *testing.T) ([]logRecord, string) {
	t.Helper()
	l.mu.Lock()
	text := l.buf.String()
	l.buf.Reset()
	l.mu.Unlock()
	var recs []logRecord
	for line := range strings.Lines(text) {
		var r logRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		recs = append(recs, r)
	}
	return recs, text
}

// TestRejectionsReadOneWay checks the wording contract of the package
// documentation: every rejection of a token, whichever check refused it (the
// header's presence and form included, which go-grpc-middleware's
// auth.AuthFromMD would word its own way), is codes.Unauthenticated with a
// message "testserver: <reason>", and is logged at the default level (Info;
// Warn for a reused refresh token) with the method and the same reason. No
// token appears in a message or a log line.
func TestRejectionsReadOneWay(t *testing.T) {
	clock := newFakeClock()
	logs := &jsonLog{}
	srv := testserver.New(testserver.WithClock(clock.Now), testserver.WithLogger(logs.logger()))
	_, c := start(t, srv)

	const secret = "at_SECRETNOTISSUED"
	withHeader := func(vals ...string) context.Context {
		ctx := t.Context()
		for _, v := range vals {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", v)
		}
		return ctx
	}
	echoCall := func(ctx context.Context) error {
		_, err := c.echo.Echo(ctx, &echov1.EchoRequest{Message: "x"})
		return err
	}
	bidiCall := func(ctx context.Context) error {
		s, err := c.echo.BidiStreamEcho(ctx)
		if err != nil {
			return err
		}
		if err := s.CloseSend(); err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	refreshCall := func(rt string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := refresh(ctx, c, rt)
			return err
		}
	}

	type rejected struct {
		name    string
		setup   func() // runs just before call
		call    func(context.Context) error
		ctx     func() context.Context
		method  string
		logMsg  string
		level   string
		secrets []string // must appear in neither the message nor the log
	}
	var expiring, revoked, rotated *authv1.TokenPair
	access := func(name string, ctx func() context.Context, secrets ...string) *rejected {
		return &rejected{name: name, call: echoCall, ctx: ctx, method: echov1.EchoService_Echo_FullMethodName,
			logMsg: "access token rejected", level: "INFO", secrets: secrets}
	}
	cases := []*rejected{
		access("no header", func() context.Context { return t.Context() }),
		access("two headers", func() context.Context { return withHeader("Bearer "+secret, "Bearer "+secret) }, secret),
		access("other scheme", func() context.Context { return withHeader("Basic " + secret) }, secret),
		access("no scheme", func() context.Context { return withHeader(secret) }, secret),
		access("empty token", func() context.Context { return withHeader("Bearer ") }),
		access("unknown token", func() context.Context { return bearer(t.Context(), secret) }, secret),
		&rejected{
			name: "unknown token on a stream", call: bidiCall, ctx: func() context.Context { return bearer(t.Context(), secret) },
			method: echov1.EchoService_BidiStreamEcho_FullMethodName, logMsg: "access token rejected", level: "INFO",
			secrets: []string{secret},
		},
		func() *rejected {
			r := access("expired token", func() context.Context { return bearer(t.Context(), expiring.GetAccessToken()) })
			r.setup = func() {
				expiring = login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
				clock.Advance(testserver.DefaultAccessTokenTTL)
				r.secrets = []string{expiring.GetAccessToken(), expiring.GetRefreshToken()}
			}
			return r
		}(),
		func() *rejected {
			r := access("revoked token", func() context.Context { return bearer(t.Context(), revoked.GetAccessToken()) })
			r.setup = func() {
				revoked = login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
				srv.RevokeToken(revoked.GetAccessToken())
			}
			return r
		}(),
		&rejected{
			name: "unknown refresh token", call: refreshCall("rt_SECRETNOTISSUED"), ctx: func() context.Context { return t.Context() },
			method: authv1.AuthService_Refresh_FullMethodName, logMsg: "refresh token rejected", level: "INFO",
			secrets: []string{"rt_SECRETNOTISSUED"},
		},
		func() *rejected {
			r := &rejected{
				name: "reused refresh token", ctx: func() context.Context { return t.Context() },
				method: authv1.AuthService_Refresh_FullMethodName, logMsg: "refresh token rejected", level: "WARN",
			}
			r.setup = func() {
				rotated = login(t, c, testserver.DefaultUser, testserver.DefaultPassword)
				if _, err := refresh(t.Context(), c, rotated.GetRefreshToken()); err != nil {
					t.Fatal(err)
				}
				r.call = refreshCall(rotated.GetRefreshToken())
				r.secrets = []string{rotated.GetRefreshToken()}
			}
			return r
		}(),
	}
	for _, tc := range cases {
		if tc.setup != nil {
			tc.setup()
		}
		// Drop what the setup logged (logins, a refresh).
		_, _ = logs.take(t)
		err := tc.call(tc.ctx())
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: %v, want code Unauthenticated", tc.name, err)
			continue
		}
		msg := status.Convert(err).Message()
		reason, ok := strings.CutPrefix(msg, "testserver: ")
		if !ok || reason == "" {
			t.Errorf("%s: message %q does not read \"testserver: <reason>\"", tc.name, msg)
		}
		recs, text := logs.take(t)
		if len(recs) != 1 {
			t.Errorf("%s: %d log lines at the default level, want 1:\n%s", tc.name, len(recs), text)
		} else if r := recs[0]; r.Level != tc.level || r.Msg != tc.logMsg || r.Method != tc.method || r.Reason != reason {
			t.Errorf("%s: logged %+v, want level %s, msg %q, method %s, reason %q", tc.name, r, tc.level, tc.logMsg, tc.method, reason)
		}
		for _, s := range tc.secrets {
			if strings.Contains(msg, s) || strings.Contains(text, s) {
				t.Errorf("%s: a token appears in the message %q or the log:\n%s", tc.name, msg, text)
			}
		}
	}

	// The other refusals of AuthService share the prefix.
	_, err := c.auth.Login(t.Context(), &authv1.LoginRequest{User: testserver.DefaultUser, Password: "hunter2"})
	if status.Code(err) != codes.Unauthenticated || !strings.HasPrefix(status.Convert(err).Message(), "testserver: ") {
		t.Errorf("Login with a wrong password: %v, want Unauthenticated \"testserver: …\"", err)
	}
	recs, text := logs.take(t)
	if len(recs) != 1 || recs[0].Msg != "login failed" || recs[0].Method != authv1.AuthService_Login_FullMethodName || strings.Contains(text, "hunter2") {
		t.Errorf("failed login logged as:\n%s", text)
	}
	_, err = refresh(t.Context(), c, "")
	if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), "testserver: ") {
		t.Errorf("Refresh without a token: %v, want InvalidArgument \"testserver: …\"", err)
	}
}

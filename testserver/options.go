package testserver

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Defaults used by New when the corresponding option is not given.
const (
	// DefaultAccessTokenTTL is how long an access token is accepted.
	DefaultAccessTokenTTL = time.Minute
	// DefaultRefreshTokenTTL is how long an unused refresh token is accepted.
	DefaultRefreshTokenTTL = 24 * time.Hour
	// DefaultUser is the user that exists when no WithUser option is given.
	DefaultUser = "demo"
	// DefaultPassword is DefaultUser's password.
	DefaultPassword = "demo-password"
	// DefaultStopTimeout is how long Endpoint.Stop waits for in-flight RPCs
	// to finish before it closes them.
	DefaultStopTimeout = 5 * time.Second
)

// Option configures a Server made by New.
type Option func(*options)

type options struct {
	accessTTL      time.Duration
	refreshTTL     time.Duration
	clock          func() time.Time
	refreshLatency time.Duration
	failN          int
	failCode       codes.Code
	failFunc       func(ctx context.Context, refreshToken string) error
	users          map[string]string
	logger         *slog.Logger
	onReject       func(context.Context, Rejection)
}

func defaultOptions() options {
	return options{
		accessTTL:  DefaultAccessTokenTTL,
		refreshTTL: DefaultRefreshTokenTTL,
		clock:      time.Now,
		logger:     slog.New(slog.DiscardHandler),
	}
}

// WithAccessTokenTTL sets how long an access token is accepted after it is
// issued. The default is DefaultAccessTokenTTL (1 minute). A value <= 0 is
// ignored.
func WithAccessTokenTTL(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.accessTTL = d
		}
	}
}

// WithRefreshTokenTTL sets how long a refresh token is accepted after it is
// issued. The default is DefaultRefreshTokenTTL (24 hours). A value <= 0 is
// ignored.
func WithRefreshTokenTTL(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.refreshTTL = d
		}
	}
}

// WithClock sets the clock used to stamp and check token expiry. The default
// is time.Now. A test moves its own clock forward to expire tokens without
// waiting. The clock must be safe for concurrent use; nil is ignored.
// Refresh latency is measured with timers, not with this clock (inside a
// testing/synctest bubble those timers run on the bubble's fake time).
func WithClock(now func() time.Time) Option {
	return func(o *options) {
		if now != nil {
			o.clock = now
		}
	}
}

// WithRefreshLatency makes every Refresh call wait d before it is processed.
// The wait ends early, with the caller's context error, when the caller gives
// up. The default is no latency. Server.SetRefreshLatency changes it at run
// time.
func WithRefreshLatency(d time.Duration) Option {
	return func(o *options) {
		o.refreshLatency = max(d, 0)
	}
}

// WithRefreshFailures makes the next n Refresh calls fail with code without
// looking at the refresh token, so the token stays usable for a later call.
// codes.OK stands for codes.Unavailable. The budget is spent after the
// refresh latency, so a call abandoned during the latency spends none.
// Server.FailNextRefreshes changes it at run time.
func WithRefreshFailures(n int, code codes.Code) Option {
	return func(o *options) {
		o.failN = max(n, 0)
		o.failCode = code
	}
}

// WithRefreshFailureFunc installs a predicate consulted by every Refresh call
// (after the latency and the WithRefreshFailures budget). When f returns a
// non-nil error the call fails with it, without consuming the refresh token;
// return a status error to choose the code (other errors become Unknown). f
// may block, for example until a test releases it, and runs concurrently for
// concurrent calls.
func WithRefreshFailureFunc(f func(ctx context.Context, refreshToken string) error) Option {
	return func(o *options) {
		o.failFunc = f
	}
}

// WithUser adds a user that may Login. When no WithUser option is given, the
// server has exactly one user, DefaultUser with DefaultPassword; once WithUser
// is used, only the users it adds exist. Empty names are ignored.
func WithUser(name, password string) Option {
	return func(o *options) {
		if name == "" {
			return
		}
		if o.users == nil {
			o.users = make(map[string]string)
		}
		o.users[name] = password
	}
}

// WithLogger sets the logger for server events (logins, refreshes, reuse
// detection, revocations). Token values are never logged. The default
// discards everything; nil is ignored.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// StartOption configures an Endpoint made by Server.Start.
type StartOption func(*startOptions)

type startOptions struct {
	addr        string
	tls         bool
	bufconn     bool
	bufSize     int
	reflection  bool
	stopTimeout time.Duration
	serverOpts  []grpc.ServerOption
}

func defaultStartOptions() startOptions {
	return startOptions{
		addr:        "127.0.0.1:0",
		bufSize:     1 << 20,
		stopTimeout: DefaultStopTimeout,
	}
}

// TLS serves with a self-signed ECDSA P-256 certificate made at start, valid
// for 127.0.0.1, ::1 and localhost. Endpoint.ClientCredentials and
// Endpoint.DialOptions trust exactly that certificate. Without TLS the
// endpoint serves plaintext and its client credentials are insecure.
func TLS() StartOption {
	return func(o *startOptions) { o.tls = true }
}

// Bufconn serves on an in-memory google.golang.org/grpc/test/bufconn
// listener instead of TCP. Endpoint.DialOptions then carries the matching
// context dialer, and Endpoint.Target is "passthrough:///localhost".
func Bufconn() StartOption {
	return func(o *startOptions) { o.bufconn = true }
}

// Address sets the TCP address to listen on. The default is "127.0.0.1:0",
// an ephemeral loopback port. It has no effect with Bufconn.
func Address(addr string) StartOption {
	return func(o *startOptions) { o.addr = addr }
}

// Reflection registers the gRPC server reflection services (v1 and v1alpha)
// so tools such as grpcurl can list the services. Reflection needs no token.
func Reflection() StartOption {
	return func(o *startOptions) { o.reflection = true }
}

// StopTimeout bounds how long Endpoint.Stop waits for in-flight RPCs before
// it closes them. The default is DefaultStopTimeout; a value <= 0 makes Stop
// close them at once.
func StopTimeout(d time.Duration) StartOption {
	return func(o *startOptions) { o.stopTimeout = d }
}

// ExtraServerOptions adds grpc.ServerOptions to the endpoint's grpc.Server,
// after the server's own (see Server.ServerOptions).
func ExtraServerOptions(opts ...grpc.ServerOption) StartOption {
	return func(o *startOptions) { o.serverOpts = append(o.serverOpts, opts...) }
}

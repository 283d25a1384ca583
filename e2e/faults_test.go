package e2e_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// faultRow is one row of the fault matrix.
type faultRow struct {
	name string
	cfg  rigConfig
	// fault injects the fault and returns the error the caller saw.
	fault     func(t *testing.T, r *rig) error
	wantCode  codes.Code
	wantIs    []error
	wantNotIs []error
	// wantServer is what the server counted from the warm-up to the end of
	// fault (waited for: the server counts a call when its handler ends).
	wantServer counts
	// check, if set, makes further assertions after wantServer.
	check func(t *testing.T, r *rig)
	// recovery describes and recover clears the fault; then a call must
	// succeed, and the server must have counted wantAfter in total.
	recovery  string
	recover   func(t *testing.T, r *rig)
	wantAfter counts
	// wantAfterKept, if set, is accepted instead of wantAfter: what the
	// server counts once the Source keeps the rotated refresh token of a
	// token it refuses (see TestFaultInvalidRefreshResultKeepsRotatedRefreshToken):
	// the recovery then refreshes with it instead of logging in again.
	wantAfterKept *counts
}

// transientOnly lists the sentinels that an error of a transient failure
// to obtain a token must not match.
func transientOnly() []error {
	return []error{tokensource.ErrReauthRequired, tokensource.ErrInvalidToken, tokensource.ErrRefreshTimeout,
		context.DeadlineExceeded, context.Canceled}
}

// malformed returns a matrix row in which the Refresher's first token (from
// a login) is replaced by bad(token).
func malformed(name string, bad func(tok *tokensource.Token) *tokensource.Token) faultRow {
	var kept *counts
	probe := &tokensource.Token{AccessToken: "at_probe", RefreshToken: "rt_probe", Expiry: time.Now().Add(time.Hour)}
	if b := bad(probe); b != nil && b.RefreshToken != "" {
		kept = &counts{Logins: 1, RefreshOK: 1, Echo: 1}
	}
	return faultRow{
		name: "malformed token from the Refresher: " + name,
		cfg:  rigConfig{noWarmup: true},
		fault: func(_ *testing.T, r *rig) error {
			r.setMutation(bad)
			return r.ping(r.ctx)
		},
		wantCode:   codes.Unavailable,
		wantIs:     []error{tokensource.ErrInvalidToken},
		wantNotIs:  []error{tokensource.ErrReauthRequired},
		wantServer: counts{Logins: 1},
		check: func(t *testing.T, r *rig) {
			if n := r.srv.Counters().RequestsWithToken; n != 0 {
				t.Errorf("the server saw %d requests with a token; the bad token must never be sent", n)
			}
		},
		recovery:      "Refresher fixed, backoff passed",
		recover:       func(_ *testing.T, r *rig) { r.setMutation(nil); r.passBackoff() },
		wantAfter:     counts{Logins: 2, Echo: 1},
		wantAfterKept: kept,
	}
}

// stillReauth checks that a Source in the re-authentication-required state
// fails the next call at once without calling the Refresher, and that the
// hook fired once.
func stillReauth(t *testing.T, r *rig) {
	select {
	case <-r.reauthed:
	case <-r.ctx.Done():
		t.Fatal("the OnReauthRequired hook never ran")
	}
	if n := r.reauths.Load(); n != 1 {
		t.Errorf("OnReauthRequired fired %d times, want 1", n)
	}
	started := r.events.count(tokensource.RefreshStarted)
	r.passBackoff()
	err := r.ping(r.ctx)
	if status.Code(err) != codes.Unauthenticated || !errors.Is(err, tokensource.ErrReauthRequired) {
		t.Errorf("next call: %s, want Unauthenticated matching ErrReauthRequired", outcome(err))
	}
	if n := r.events.count(tokensource.RefreshStarted); n != started {
		t.Errorf("the Refresher was called again (%d refreshes started, want %d)", n, started)
	}
}

func faultRows() []faultRow {
	return []faultRow{
		{
			name: "refresh endpoint down (connection refused)",
			cfg:  rigConfig{deadRefresher: true, noWarmup: true},
			fault: func(_ *testing.T, r *rig) error {
				return r.ping(r.ctx)
			},
			wantCode:   codes.Unavailable,
			wantNotIs:  transientOnly(),
			wantServer: counts{},
			check: func(t *testing.T, r *rig) {
				// Within the backoff the next call fails at once, without
				// another attempt.
				if err := r.ping(r.ctx); status.Code(err) != codes.Unavailable {
					t.Errorf("call within the backoff: %s, want Unavailable", outcome(err))
				}
				if n := r.events.count(tokensource.RefreshStarted); n != 1 {
					t.Errorf("%d refreshes started, want 1 (the second call is within the backoff)", n)
				}
			},
			recovery: "endpoint started on the dead port, backoff passed",
			recover: func(_ *testing.T, r *rig) {
				r.startEndpoint(r.deadAddr)
				r.waitReady(r.authConn)
				r.passBackoff()
			},
			wantAfter: counts{Logins: 1, Echo: 1},
		},
		{
			name: "refresh slower than the refresh timeout (2 s)",
			cfg:  rigConfig{srcOpts: []tokensource.Option{tokensource.WithRefreshTimeout(shortRefreshTimeout)}},
			fault: func(_ *testing.T, r *rig) error {
				r.srv.SetRefreshLatency(time.Minute)
				r.srv.ForceExpire()
				return r.ping(r.ctx)
			},
			wantCode:   codes.Unavailable,
			wantIs:     []error{tokensource.ErrRefreshTimeout},
			wantNotIs:  []error{context.DeadlineExceeded, tokensource.ErrReauthRequired},
			wantServer: counts{RefreshFailed: 1, Unauthenticated: 1, Echo: 1},
			recovery:   "latency removed, backoff passed",
			recover: func(_ *testing.T, r *rig) {
				r.srv.SetRefreshLatency(0)
				// The Refresher the timeout cut off must have returned:
				// until then callers fail at once.
				r.waitIdle()
				r.passBackoff()
			},
			wantAfter: counts{RefreshOK: 1, RefreshFailed: 1, Unauthenticated: 2, Echo: 3},
		},
		func() faultRow {
			var other error // a second caller waiting for the same refresh
			// The refresh is held until the caller has given up, so its
			// deadline ends during the refresh however slow load makes
			// the RPCs; the deadline itself is long against an RPC.
			gate := newRefreshGate()
			return faultRow{
				name: "caller's deadline (2 s) ends during a refresh (held until then)",
				cfg:  rigConfig{srvOpts: []testserver.Option{gate.option()}},
				fault: func(_ *testing.T, r *rig) error {
					defer gate.release()
					r.srv.ForceExpire()
					done := make(chan struct{})
					go func() { defer close(done); other = r.ping(r.ctx) }()
					ctx, cancel := context.WithTimeout(r.ctx, 2*time.Second)
					defer cancel()
					err := r.ping(ctx)
					gate.release()
					<-done
					return err
				},
				wantCode:   codes.DeadlineExceeded,
				wantIs:     []error{context.DeadlineExceeded},
				wantNotIs:  []error{tokensource.ErrRefreshTimeout},
				wantServer: counts{RefreshOK: 1, Unauthenticated: 2, Echo: 3},
				check: func(t *testing.T, r *rig) {
					if other != nil {
						t.Errorf("the other caller waiting for the same refresh failed: %s", outcome(other))
					}
				},
				recovery:  "none needed, the refresh finished for the others",
				recover:   func(*testing.T, *rig) {},
				wantAfter: counts{RefreshOK: 1, Unauthenticated: 2, Echo: 4},
			}
		}(),
		func() faultRow {
			// The refresh is held until the caller has returned, so that
			// the cancellation lands while it runs, however late load
			// makes the cancelling goroutine run.
			gate := newRefreshGate()
			return faultRow{
				name: "caller cancelled while the refresh it started runs",
				cfg:  rigConfig{srvOpts: []testserver.Option{gate.option()}},
				fault: func(t *testing.T, r *rig) error {
					defer gate.release()
					r.srv.ForceExpire()
					ctx, cancel := context.WithCancel(r.ctx)
					defer cancel()
					go func() {
						// Cancel once the forced refresh (the second after the
						// warm-up login) has started.
						if r.events.waitCount(ctx, tokensource.RefreshStarted, 2) == nil {
							cancel()
						}
					}()
					err := r.ping(ctx)
					gate.release()
					if werr := r.events.waitCount(r.ctx, tokensource.RefreshSucceeded, 2); werr != nil {
						t.Errorf("the refresh did not complete: %v", werr)
					}
					return err
				},
				wantCode:   codes.Canceled,
				wantIs:     []error{context.Canceled},
				wantServer: counts{RefreshOK: 1, Unauthenticated: 1, Echo: 1},
				recovery:   "none needed, the refresh completed",
				recover:    func(*testing.T, *rig) {},
				wantAfter:  counts{RefreshOK: 1, Unauthenticated: 1, Echo: 2},
			}
		}(),
		{
			// One Refresher call per refresh, so that each call meets one
			// of the failures (TestIdPBlip covers the attempts inside one
			// refresh).
			name: "refresh answered Unavailable 3 times, then OK",
			cfg:  rigConfig{srcOpts: []tokensource.Option{tokensource.WithRefreshAttempts(1)}},
			fault: func(t *testing.T, r *rig) error {
				r.srv.FailNextRefreshes(3, codes.Unavailable)
				r.srv.ForceExpire()
				var err error
				for i := range 3 {
					if i > 0 {
						r.passBackoff()
					}
					err = r.ping(r.ctx)
					if status.Code(err) != codes.Unavailable {
						t.Errorf("call %d: %s, want Unavailable", i+1, outcome(err))
					}
				}
				return err
			},
			wantCode:   codes.Unavailable,
			wantNotIs:  transientOnly(),
			wantServer: counts{RefreshFailed: 3, Unauthenticated: 3, Echo: 3},
			recovery:   "backoff passed",
			recover:    func(_ *testing.T, r *rig) { r.passBackoff() },
			wantAfter:  counts{RefreshOK: 1, RefreshFailed: 3, Unauthenticated: 4, Echo: 5},
		},
		{
			name: "refresh answered Unauthenticated",
			fault: func(_ *testing.T, r *rig) error {
				r.srv.FailNextRefreshes(1, codes.Unauthenticated)
				r.srv.ForceExpire()
				return r.ping(r.ctx)
			},
			wantCode:   codes.Unauthenticated,
			wantIs:     []error{tokensource.ErrReauthRequired},
			wantServer: counts{RefreshFailed: 1, Unauthenticated: 2, Echo: 1},
			check:      stillReauth,
			recovery:   "re-login (SetToken)",
			recover:    func(_ *testing.T, r *rig) { r.relogin() },
			wantAfter:  counts{RefreshFailed: 1, Unauthenticated: 3, Echo: 3},
		},
		{
			name: "refresh answered PermissionDenied",
			fault: func(_ *testing.T, r *rig) error {
				r.srv.FailNextRefreshes(1, codes.PermissionDenied)
				r.srv.ForceExpire()
				return r.ping(r.ctx)
			},
			wantCode:   codes.Unauthenticated,
			wantIs:     []error{tokensource.ErrReauthRequired},
			wantServer: counts{RefreshFailed: 1, Unauthenticated: 1, Echo: 1},
			check:      stillReauth,
			recovery:   "re-login (SetToken)",
			recover:    func(_ *testing.T, r *rig) { r.relogin() },
			wantAfter:  counts{RefreshFailed: 1, Unauthenticated: 2, Echo: 3},
		},
		malformed("nil token", func(*tokensource.Token) *tokensource.Token { return nil }),
		malformed("empty access token", func(tok *tokensource.Token) *tokensource.Token {
			c := *tok
			c.AccessToken = ""
			return &c
		}),
		malformed("already expired", func(tok *tokensource.Token) *tokensource.Token {
			c := *tok
			c.Expiry = time.Time{}.Add(time.Second) // long past by any clock
			return &c
		}),
		malformed("CR LF (header injection)", func(tok *tokensource.Token) *tokensource.Token {
			c := *tok
			c.AccessToken += "\r\nx-injected: yes"
			return &c
		}),
		malformed("space", func(tok *tokensource.Token) *tokensource.Token {
			c := *tok
			c.AccessToken = c.AccessToken[:8] + " " + c.AccessToken[8:]
			return &c
		}),
		malformed("non-ASCII", func(tok *tokensource.Token) *tokensource.Token {
			c := *tok
			c.AccessToken += "\u00e9"
			return &c
		}),
		func() faultRow {
			var clientStreamErr error
			return faultRow{
				name: "server restarts under open streams",
				cfg:  rigConfig{stopAtOnce: true},
				fault: func(t *testing.T, r *rig) error {
					bidi, err := r.echo.BidiStreamEcho(r.ctx)
					if err != nil {
						t.Fatal(err)
					}
					if err := bidi.Send(&echov1.BidiStreamEchoRequest{Message: "a"}); err != nil {
						t.Fatal(err)
					}
					if _, err := bidi.Recv(); err != nil {
						t.Fatal(err)
					}
					// A client stream that has sent but not been answered.
					cs, err := r.echo.ClientStreamEcho(r.ctx)
					if err != nil {
						t.Fatal(err)
					}
					if err := cs.Send(&echov1.ClientStreamEchoRequest{Message: "x"}); err != nil {
						t.Fatal(err)
					}
					r.eps[0].Stop()
					_, clientStreamErr = cs.CloseAndRecv()
					r.record(clientStreamErr)
					_, err = bidi.Recv()
					r.record(err)
					return err
				},
				wantCode:   codes.Unavailable,
				wantNotIs:  transientOnly(),
				wantServer: counts{},
				check: func(t *testing.T, r *rig) {
					if status.Code(clientStreamErr) != codes.Unavailable {
						t.Errorf("unanswered client stream: %s, want Unavailable", outcome(clientStreamErr))
					}
					if n := r.events.count(tokensource.RefreshStarted); n != 1 {
						t.Errorf("%d refreshes started, want 1 (the warm-up login; a lost connection is no token problem)", n)
					}
				},
				recovery: "new endpoint on the same address",
				recover: func(_ *testing.T, r *rig) {
					r.startEndpoint(r.addr)
					r.waitReady(r.conn)
				},
				wantAfter: counts{Echo: 1},
			}
		}(),
		{
			name: "tokens revoked before their expiry (RevokeAll)",
			fault: func(_ *testing.T, r *rig) error {
				r.srv.RevokeAll()
				return r.ping(r.ctx)
			},
			wantCode:   codes.Unauthenticated,
			wantIs:     []error{tokensource.ErrReauthRequired},
			wantServer: counts{RefreshFailed: 1, Unauthenticated: 2, Echo: 1},
			check:      stillReauth,
			recovery:   "re-login (SetToken)",
			recover:    func(_ *testing.T, r *rig) { r.relogin() },
			wantAfter:  counts{RefreshFailed: 1, Unauthenticated: 3, Echo: 3},
		},
		{
			name: "both clocks jump 2 h forward (past the access token's expiry)",
			fault: func(_ *testing.T, r *rig) error {
				r.srvClock.Advance(2 * time.Hour)
				r.cliClock.Advance(2 * time.Hour)
				return r.ping(r.ctx)
			},
			wantCode:   codes.OK,
			wantServer: counts{RefreshOK: 1, Echo: 1},
			check: func(t *testing.T, r *rig) {
				evs := r.events.snapshot()
				for _, ev := range evs {
					if ev.Kind == tokensource.RefreshStarted && ev.Forced {
						t.Errorf("a forced refresh ran; the expired token must be replaced before it is sent")
					}
				}
			},
			recovery:  "none needed",
			recover:   func(*testing.T, *rig) {},
			wantAfter: counts{RefreshOK: 1, Echo: 2},
		},
		{
			name: "both clocks jump 25 h forward (past the refresh token's lifetime)",
			fault: func(_ *testing.T, r *rig) error {
				r.srvClock.Advance(25 * time.Hour)
				r.cliClock.Advance(25 * time.Hour)
				return r.ping(r.ctx)
			},
			wantCode: codes.Unauthenticated,
			wantIs:   []error{tokensource.ErrReauthRequired},
			// The expired access token is never sent; neither is it once
			// the Source requires re-authentication.
			wantServer: counts{RefreshFailed: 1, Unauthenticated: 1},
			check:      stillReauth,
			recovery:   "re-login (SetToken)",
			recover:    func(_ *testing.T, r *rig) { r.relogin() },
			wantAfter:  counts{RefreshFailed: 1, Unauthenticated: 1, Echo: 1},
		},
		{
			name: "both clocks jump 2 h back, then 3 h forward",
			fault: func(_ *testing.T, r *rig) error {
				r.srvClock.Advance(-2 * time.Hour)
				r.cliClock.Advance(-2 * time.Hour)
				return r.ping(r.ctx)
			},
			wantCode:   codes.OK,
			wantServer: counts{Echo: 1},
			check: func(t *testing.T, r *rig) {
				// Forward again to 1 h past the token's issue: it has
				// expired and is replaced before it is sent.
				r.srvClock.Advance(3 * time.Hour)
				r.cliClock.Advance(3 * time.Hour)
				if err := r.ping(r.ctx); err != nil {
					t.Errorf("call after the jump forward: %s", outcome(err))
				}
			},
			recovery:  "none needed",
			recover:   func(*testing.T, *rig) {},
			wantAfter: counts{RefreshOK: 1, Echo: 3},
		},
		{
			name: "server clock 2 h ahead of the client's",
			fault: func(_ *testing.T, r *rig) error {
				r.srvClock.Advance(2 * time.Hour)
				return r.ping(r.ctx)
			},
			wantCode:   codes.OK,
			wantServer: counts{RefreshOK: 1, Unauthenticated: 1, Echo: 2},
			recovery:   "none needed",
			recover:    func(*testing.T, *rig) {},
			wantAfter:  counts{RefreshOK: 1, Unauthenticated: 1, Echo: 3},
		},
	}
}

// TestFaultMatrix runs every row of the fault matrix against its own server
// and client, and logs one "matrix |" line per row with what was observed.
func TestFaultMatrix(t *testing.T) {
	for _, row := range faultRows() {
		t.Run(row.name, func(t *testing.T) {
			r := newRig(t, row.cfg)
			err := row.fault(t, r)
			if got := status.Code(err); got != row.wantCode {
				t.Fatalf("caller saw %s (%v), want code %v", outcome(err), err, row.wantCode)
			}
			for _, target := range row.wantIs {
				if !errors.Is(err, target) {
					t.Errorf("errors.Is(err, %v) = false; err: %v", target, err)
				}
			}
			for _, target := range row.wantNotIs {
				if errors.Is(err, target) {
					t.Errorf("errors.Is(err, %v) = true; err: %v", target, err)
				}
			}
			r.waitDelta(row.wantServer)
			if row.check != nil {
				row.check(t, r)
			}

			row.recover(t, r)
			recovered := r.ping(r.ctx)
			if recovered != nil {
				t.Errorf("call after recovery (%s): %s", row.recovery, outcome(recovered))
			}
			if row.wantAfterKept != nil {
				r.waitDelta(row.wantAfter, *row.wantAfterKept)
			} else {
				r.waitDelta(row.wantAfter)
			}

			r.finish()
			left := "none"
			if r.leakErr != nil {
				left = "SOME"
			}
			t.Logf("matrix | %s | caller: %s | server: %v | recovery: %s -> %s, server then: %v | goroutines left: %s",
				row.name, outcome(err), row.wantServer, row.recovery, outcome(recovered), r.delta(), left)
		})
	}
}

// TestFaultRejectedWhileBackingOffIsUnavailable: after a forced refresh failed
// transiently, a call whose token the server rejects must see the transient
// failure (Unavailable, which retry policies retry), not the server's
// Unauthenticated (which they do not retry and which, per the design, means
// the user must log in again or the server rejects fresh tokens).
//
// It failed before the fix: a failed forced refresh armed the minimum
// interval between forced refreshes, so within it Refresh returned the
// rejected token unchanged and the caller saw the server's Unauthenticated.
func TestFaultRejectedWhileBackingOffIsUnavailable(t *testing.T) {
	// One Refresher call per refresh: the one injected failure fails it.
	r := newRig(t, rigConfig{srcOpts: []tokensource.Option{tokensource.WithRefreshAttempts(1)}})
	r.srv.FailNextRefreshes(1, codes.Unavailable)
	r.srv.ForceExpire()
	if err := r.ping(r.ctx); status.Code(err) != codes.Unavailable {
		t.Fatalf("first call: %s, want Unavailable", outcome(err))
	}
	// Same instant: the Source is backing off and the minimum interval
	// since the failed forced refresh has not passed.
	err := r.ping(r.ctx)
	if status.Code(err) != codes.Unavailable {
		t.Errorf("call rejected while the Source backs off: %s, want Unavailable (transient)", outcome(err))
	}
	if n := r.events.count(tokensource.RefreshStarted); n != 2 {
		t.Errorf("%d refreshes started, want 2 (warm-up and the failed one; none during the backoff)", n)
	}
	r.passBackoff()
	if err := r.ping(r.ctx); err != nil {
		t.Errorf("call after the backoff: %s", outcome(err))
	}
}

// TestFaultRefreshTimeoutMatchesErrRefreshTimeout: a refresh that ends
// because the refresh timeout elapsed must fail with an error matching
// ErrRefreshTimeout, as documented, however the Refresher learnt of the
// deadline. Here it returns an error of its own as soon as the deadline has
// passed, as a gRPC Refresher does when the server, which received the
// deadline with the request, cancels the call at that instant (against the
// bundled server that happens in about one refresh in ten: "rpc error: code
// = DeadlineExceeded desc = stream terminated by RST_STREAM with error code:
// CANCEL").
//
// It failed before the fix: the Source recognised a timeout only by
// ctx.Err(), which is set by a timer that may not have run yet when the
// Refresher returns; it now also looks at the deadline, as grpc-go does for
// the same race.
func TestFaultRefreshTimeoutMatchesErrRefreshTimeout(t *testing.T) {
	const attempts = 20
	missed := 0
	for range attempts {
		src := tokensource.New(tokensource.RefresherFunc(func(ctx context.Context, _ *tokensource.Token) (*tokensource.Token, error) {
			deadline, _ := ctx.Deadline()
			time.Sleep(time.Until(deadline))
			return nil, errors.New("upstream: deadline exceeded")
		}), tokensource.WithRefreshTimeout(20*time.Millisecond))
		_, err := src.Token(context.Background())
		if !errors.Is(err, tokensource.ErrRefreshTimeout) {
			missed++
		}
		_ = src.Close()
	}
	if missed > 0 {
		t.Errorf("%d of %d refreshes that ended at the refresh timeout do not match ErrRefreshTimeout", missed, attempts)
	}
}

// TestFaultInvalidRefreshResultKeepsRotatedRefreshToken: when the Refresher
// rotated the refresh token but the Source refuses the new token (its access
// token is malformed, or it looks expired because the client's clock runs
// ahead), the Source must keep the rotated refresh token for the next
// attempt. Otherwise the next attempt presents the consumed refresh token,
// the server's reuse detection revokes the whole family, and a transient
// fault ("handled like any transient failure", says the package
// documentation) forces the user to log in again.
//
// It failed before the fix, when the Source discarded the whole token.
func TestFaultInvalidRefreshResultKeepsRotatedRefreshToken(t *testing.T) {
	for _, tc := range []struct {
		name         string
		fault, clear func(r *rig)
	}{
		{
			name: "empty access token",
			fault: func(r *rig) {
				r.setMutation(func(tok *tokensource.Token) *tokensource.Token {
					c := *tok
					c.AccessToken = ""
					return &c
				})
			},
			clear: func(r *rig) { r.setMutation(nil) },
		},
		{
			name:  "client clock ahead by more than the token lifetime",
			fault: func(r *rig) { r.cliClock.Advance(2 * time.Hour) },
			// The skew is cleared by moving the server's clock: moving the
			// client's back would also move its backoff deadline two hours
			// away, which with time.Now (monotonic) cannot happen.
			clear: func(r *rig) { r.srvClock.Advance(2 * time.Hour) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, rigConfig{})
			tc.fault(r)
			r.srv.ForceExpire()
			err := r.ping(r.ctx)
			if status.Code(err) != codes.Unavailable || !errors.Is(err, tokensource.ErrInvalidToken) {
				t.Fatalf("call during the fault: %s, want Unavailable matching ErrInvalidToken", outcome(err))
			}
			tc.clear(r)
			r.passBackoff()
			err = r.ping(r.ctx)
			if err != nil {
				t.Errorf("call after the fault cleared: %s, want OK", outcome(err))
			}
			if d := r.delta(); d.RefreshFailed != 0 {
				t.Errorf("server: %v; a refresh failed: the consumed refresh token was presented again (reuse detection revokes the family)", d)
			}
		})
	}
}

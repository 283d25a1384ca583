package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// expect fails the test unless err has code and matches every error in is,
// and records it for the secrets check.
func (r *rig) expect(what string, err error, code codes.Code, is ...error) {
	r.t.Helper()
	r.record(err)
	if got := status.Code(err); got != code {
		r.t.Errorf("%s: %s (%v), want code %v", what, outcome(err), err, code)
		return
	}
	for _, target := range is {
		if !errors.Is(err, target) {
			r.t.Errorf("%s: %s does not match %v", what, outcome(err), target)
		}
	}
}

// renderAll records every rendering of the Source's events and of tok for
// the secrets check.
func (r *rig) renderAll(tok *tokensource.Token) {
	var texts []string
	for _, ev := range r.events.snapshot() {
		texts = append(texts, fmt.Sprintf("%v", ev), fmt.Sprintf("%+v", ev), fmt.Sprintf("%#v", ev))
	}
	if tok != nil {
		texts = append(texts, fmt.Sprintf("%v %+v %#v %s %q %x %v %+v %#v %s", *tok, *tok, *tok, *tok, *tok, *tok, tok, tok, tok, tok),
			fmt.Sprintf("%+v", struct{ Token *tokensource.Token }{tok}))
		var b syncBuffer
		slog.New(slog.NewJSONHandler(&b, nil)).Info("token", "token", tok, "value", *tok)
		slog.New(slog.NewTextHandler(&b, nil)).Info("token", "token", tok, "value", *tok)
		texts = append(texts, b.String())
	}
	texts = append(texts, fmt.Sprintf("%+v", r.src.Stats()), fmt.Sprintf("%#v", r.srv.Counters()))
	r.mu.Lock()
	r.texts = append(r.texts, texts...)
	r.mu.Unlock()
}

// TestNoSecretsAnywhere drives every error path it can reach, with the
// Source, the interceptors and the test server logging at Debug level into
// one buffer, and records every error the callers see in every fmt
// rendering, together with the renderings of the tokens and of the Source's
// events. At the end of each part, rig.finish asserts that none of the
// credentials the server issued or the tests made (access and refresh
// tokens, including malformed ones) appears anywhere.
func TestNoSecretsAnywhere(t *testing.T) {
	t.Run("refresh, stream and re-authentication paths", func(t *testing.T) {
		// One Refresher call per refresh, so that each injected failure
		// reaches the caller.
		r := newRig(t, rigConfig{srcOpts: []tokensource.Option{tokensource.WithRefreshTimeout(shortRefreshTimeout),
			tokensource.WithRefreshAttempts(1)}})
		ctx := r.ctx

		// A rejected token, refreshed and retried.
		r.srv.ForceExpire()
		r.expect("unary call after ForceExpire", r.ping(ctx), codes.OK)

		// A stream rejected before any response: reopened and replayed.
		r.passBackoff()
		r.srv.ForceExpire()
		bidi, err := r.echo.BidiStreamEcho(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []string{"a", "b"} {
			if err := bidi.Send(&echov1.BidiStreamEchoRequest{Message: m}); err != nil && err != io.EOF {
				t.Fatal(err)
			}
		}
		_ = bidi.CloseSend()
		n := 0
		for {
			_, err := bidi.Recv()
			if err != nil {
				if err != io.EOF {
					r.expect("replayed bidi stream", err, codes.OK)
				}
				break
			}
			n++
		}
		if n != 2 {
			t.Errorf("the replayed bidi stream returned %d messages, want 2", n)
		}

		// A stream rejected after a response: returned as is.
		r.passBackoff()
		ss, err := r.echo.ServerStreamEcho(ctx, &echov1.ServerStreamEchoRequest{Message: "s", Count: 3, FailAfter: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ss.Recv(); err != nil {
			t.Fatal(err)
		}
		_, err = ss.Recv()
		r.expect("stream rejected after a response", err, codes.Unauthenticated)

		// A transient refresh failure.
		r.passBackoff()
		r.srv.FailNextRefreshes(1, codes.Unavailable)
		r.srv.ForceExpire()
		r.expect("refresh answered Unavailable", r.ping(ctx), codes.Unavailable)

		// A refresh cut off by the refresh timeout.
		r.passBackoff()
		r.srv.SetRefreshLatency(time.Minute)
		// (ErrRefreshTimeout is not asserted: see
		// TestFaultRefreshTimeoutMatchesErrRefreshTimeout.)
		r.expect("refresh timed out", r.ping(ctx), codes.Unavailable)

		// The caller's own deadline while it waits for a refresh (which
		// then times out for the Source too). The Refresher cut off above
		// must have returned first: until it does, callers fail at once.
		r.waitIdle()
		r.passBackoff()
		failed := r.events.count(tokensource.RefreshFailed)
		// Long enough to reach the Source on a loaded machine, shorter than
		// the refresh timeout (2 s).
		short, cancel := context.WithTimeout(ctx, time.Second)
		r.expect("caller's deadline", r.ping(short), codes.DeadlineExceeded, context.DeadlineExceeded)
		cancel()
		if err := r.events.waitCount(ctx, tokensource.RefreshFailed, failed+1); err != nil {
			t.Fatal(err)
		}
		r.srv.SetRefreshLatency(0)

		// Malformed tokens from the Refresher, each in a fresh family
		// (the refused refresh consumed the family's refresh token).
		appendToAccess := func(suffix string) func(*tokensource.Token) *tokensource.Token {
			return func(tok *tokensource.Token) *tokensource.Token {
				c := *tok
				c.AccessToken += suffix
				return &c
			}
		}
		for _, bad := range []func(*tokensource.Token) *tokensource.Token{
			appendToAccess("\r\nx-injected: yes"),
			appendToAccess(" trailing"),
			appendToAccess("\u00e9"),
			appendToAccess("\x00"),
			func(tok *tokensource.Token) *tokensource.Token {
				c := *tok
				c.Expiry = r.cliClock.Now().Add(-time.Minute)
				return &c
			},
			func(tok *tokensource.Token) *tokensource.Token {
				c := *tok
				c.AccessToken = ""
				return &c
			},
		} {
			r.relogin()
			r.passBackoff()
			r.srv.ForceExpire()
			r.setMutation(bad)
			r.expect("malformed token", r.ping(ctx), codes.Unavailable, tokensource.ErrInvalidToken)
		}
		r.setMutation(nil)
		// The next refresh presents the consumed refresh token: the
		// server's reuse detection revokes the family (see
		// TestFaultInvalidRefreshResultKeepsRotatedRefreshToken). Whatever
		// it answers is recorded.
		r.passBackoff()
		r.record(r.ping(ctx))

		// Permanent refresh failures: re-authentication required.
		for _, code := range []codes.Code{codes.Unauthenticated, codes.PermissionDenied} {
			r.relogin()
			r.passBackoff()
			r.srv.FailNextRefreshes(1, code)
			r.srv.ForceExpire()
			r.expect("refresh answered "+code.String(), r.ping(ctx), codes.Unauthenticated, tokensource.ErrReauthRequired)
			r.passBackoff()
			r.expect("call while re-authentication is required", r.ping(ctx), codes.Unauthenticated, tokensource.ErrReauthRequired)
		}
		r.relogin()
		r.srv.RevokeAll()
		r.expect("revoked tokens", r.ping(ctx), codes.Unauthenticated, tokensource.ErrReauthRequired)
		r.relogin()

		// SetToken refuses an unusable token.
		bad := &tokensource.Token{AccessToken: "at_set-token-secret\n", RefreshToken: "rt_set-token-secret"}
		r.secrets.add(bad)
		err = r.src.SetToken(ctx, bad)
		r.record(err)
		if !errors.Is(err, tokensource.ErrInvalidToken) {
			t.Errorf("SetToken of a malformed token: %v, want ErrInvalidToken", err)
		}

		tok, err := r.src.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r.renderAll(tok)

		// A closed Source.
		_ = r.src.Close()
		r.expect("call after Close", r.ping(ctx), codes.Unavailable, tokensource.ErrClosed)
		_, err = r.src.Token(ctx)
		r.expect("Token after Close", err, codes.Unknown, tokensource.ErrClosed)
		_, err = r.src.Refresh(ctx, tok)
		r.expect("Refresh after Close", err, codes.Unknown, tokensource.ErrClosed)
		r.expect("SetToken after Close", r.src.SetToken(ctx, tok), codes.Unknown, tokensource.ErrClosed)

		if got := r.secrets.len(); got < 20 {
			t.Errorf("only %d credentials were collected", got)
		}
		r.finish()
	})

	t.Run("refresh endpoint down", func(t *testing.T) {
		r := newRig(t, rigConfig{deadRefresher: true, noWarmup: true})
		r.expect("refresh endpoint down", r.ping(r.ctx), codes.Unavailable)
		r.finish()
	})

	t.Run("insecure transport", func(t *testing.T) {
		r := newRig(t, rigConfig{plaintext: true, noWarmup: true, initialToken: true})
		r.expect("insecure transport", r.ping(r.ctx), codes.Unauthenticated)
		r.finish()
	})

	t.Run("token store cannot be written", func(t *testing.T) {
		// Seen as a plain Store: as a Coordinator, a FileStore in a missing
		// directory cannot even take its lock, and the Source refuses to
		// refresh without it; this row is about a failing save.
		store := plainStore{tokensource.NewFileStore(filepath.Join(t.TempDir(), "missing-directory", "token.json"))}
		r := newRig(t, rigConfig{srcOpts: []tokensource.Option{tokensource.WithStore(store)}})
		if n := r.src.Stats().StoreFailures; n == 0 {
			t.Errorf("StoreFailures = 0; the save of the first token should have failed")
		}
		tok, err := r.srv.IssueToken(testserver.DefaultUser)
		if err != nil {
			t.Fatal(err)
		}
		r.secrets.add(tok)
		err = r.src.SetToken(r.ctx, tok)
		r.record(err)
		if err == nil {
			t.Error("SetToken with a store that cannot be written returned nil")
		}
		r.expect("call with the unsaved token", r.ping(r.ctx), codes.OK)
		r.renderAll(tok)
		r.finish()
	})

	t.Run("token store is corrupt", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "token.json")
		stored := &tokensource.Token{AccessToken: "at_stored-secret-4711", RefreshToken: "rt_stored-secret-0815"}
		for _, content := range []string{
			`{"version":2,"access_token":"` + stored.AccessToken + `","refresh_token":"` + stored.RefreshToken + `"}`,
			`{"version":1,"access_token":"` + stored.AccessToken + `","unknown":"` + stored.RefreshToken + `"}`,
			`{"version":1,"access_token":"` + stored.AccessToken + `","expiry":"` + stored.RefreshToken + `"}`,
			`{"version":1,"access_token":"` + stored.AccessToken,
			`{"version":1,"access_token":"` + stored.AccessToken + `"} ` + stored.RefreshToken,
		} {
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			r := newRig(t, rigConfig{noWarmup: true, srcOpts: []tokensource.Option{tokensource.WithStore(tokensource.NewFileStore(path))}})
			r.secrets.add(stored)
			r.expect("corrupt store", r.ping(r.ctx), codes.Unavailable, tokensource.ErrCorruptStore)
			r.renderAll(nil)
			r.finish()
			if got, err := os.ReadFile(path); err != nil || string(got) != content {
				t.Errorf("the corrupt file was changed: %q, %v", got, err)
			}
		}
	})
}

// TestFileStoreMode: the token file a Source writes through FileStore is
// readable by its owner only, also when it replaces a file that was not.
func TestFileStoreMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token.json")
	if err := os.WriteFile(path, []byte(`{"version":1,"refresh_token":"rt_unknown-to-the-server"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}
	r := newRig(t, rigConfig{noWarmup: true, srcOpts: []tokensource.Option{tokensource.WithStore(tokensource.NewFileStore(path))}})
	r.secrets.addString("rt_unknown-to-the-server")
	// The stored refresh token is unknown to the server: the refresh is
	// refused, and the user logs in again.
	r.expect("refresh with the stored token", r.ping(r.ctx), codes.Unauthenticated, tokensource.ErrReauthRequired)
	r.relogin()
	r.expect("call after re-login", r.ping(r.ctx), codes.OK)
	checkMode(t, path)
	r.srv.ForceExpire()
	r.expect("call after a refresh", r.ping(r.ctx), codes.OK)
	checkMode(t, path)
	tok, err := tokensource.NewFileStore(path).Load(r.ctx)
	if err != nil || tok == nil || !strings.HasPrefix(tok.RefreshToken, "rt_") {
		t.Fatalf("the file does not hold the rotated token: %v, %v", tok, err)
	}
	r.finish()
}

func checkMode(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
}

// plainStore shows only a Store's Load and Save, hiding an optional
// Coordinator.
type plainStore struct{ tokensource.Store }

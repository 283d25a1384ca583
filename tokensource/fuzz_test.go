package tokensource_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

var fuzzNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// FuzzRefresherToken feeds arbitrary tokens from a Refresher (and to
// SetToken) into a Source and checks its public behaviour: a token is
// handed out exactly when it is usable (non-empty access token of visible
// ASCII, not expired), unchanged and as the Source's own copy; an unusable
// one is refused with an error matching ErrInvalidToken and is never handed
// out later; and neither the errors nor the fmt or slog rendering of a token
// depend on the credentials' contents (they are compared with those of a
// "shadow" token whose every visible character is replaced by another), so
// they cannot reveal them.
func FuzzRefresherToken(f *testing.F) {
	f.Add("at_valid-token.1~", "rt_refresh", int64(time.Hour), false)
	f.Add("at_no_expiry", "", int64(0), true)
	f.Add("", "rt_only-refresh", int64(time.Hour), false)
	f.Add("at_expired", "rt_x", int64(-time.Second), false)
	f.Add("at_expires_now", "rt_x", int64(0), false)
	f.Add("at_one_ns", "rt_x", int64(1), false)
	f.Add("at with space", "rt_x", int64(time.Hour), false)
	f.Add("at_crlf\r\nx-injected: 1", "rt_x", int64(time.Hour), false)
	f.Add("at_tab\t", "rt_x", int64(time.Hour), false)
	f.Add("at_del\x7f", "rt_x", int64(time.Hour), false)
	f.Add("at_nul\x00", "rt_x", int64(time.Hour), false)
	f.Add("at_utf8_\u00e9\u4e16", "rt_\u00e9", int64(time.Hour), false)
	f.Add("at_invalid_utf8_\xff\xfe", "rt_\xff", int64(time.Hour), false)
	f.Add("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "rt", int64(time.Hour), false)
	f.Add("at_max_past", "rt", int64(-1<<63), false)
	f.Add("at_max_future", "rt", int64(1<<63-1), false)

	f.Fuzz(func(t *testing.T, access, refresh string, expiryOffset int64, noExpiry bool) {
		var exp time.Time
		if !noExpiry {
			exp = fuzzNow.Add(time.Duration(expiryOffset))
		}
		tok := &tokensource.Token{AccessToken: access, RefreshToken: refresh, Expiry: exp}
		shadow := &tokensource.Token{AccessToken: shadowOf(access), RefreshToken: shadowOf(refresh), Expiry: exp}
		usable := access != "" && visibleASCII(access) && (exp.IsZero() || fuzzNow.Before(exp))

		got, logs, err := fromRefresher(t, tok)
		_, shadowLogs, shadowErr := fromRefresher(t, shadow)
		if usable != (err == nil) {
			t.Fatalf("usable=%v but Token returned %v, %v", usable, got, err)
		}
		if err == nil {
			if got == tok || *got != *tok {
				t.Fatalf("Token returned %p %+v for the Refresher's %p: want an equal copy", got, got, tok)
			}
		} else {
			if !errors.Is(err, tokensource.ErrInvalidToken) {
				t.Fatalf("error does not match ErrInvalidToken: %v", err)
			}
			if shadowErr == nil || err.Error() != shadowErr.Error() {
				t.Fatalf("the error depends on the token's contents:\n%v\n%v", err, shadowErr)
			}
			noRawSecret(t, "error", err.Error(), access, refresh)
		}
		if logs != shadowLogs {
			t.Fatalf("the Source's log depends on the token's contents:\n%s\n%s", logs, shadowLogs)
		}

		setErr := setToken(tok)
		shadowSetErr := setToken(shadow)
		if usable != (setErr == nil) {
			t.Fatalf("usable=%v but SetToken returned %v", usable, setErr)
		}
		if setErr != nil {
			if !errors.Is(setErr, tokensource.ErrInvalidToken) {
				t.Fatalf("SetToken error does not match ErrInvalidToken: %v", setErr)
			}
			if shadowSetErr == nil || setErr.Error() != shadowSetErr.Error() {
				t.Fatalf("the SetToken error depends on the token's contents:\n%v\n%v", setErr, shadowSetErr)
			}
		}

		if r, s := render(tok), render(shadow); r != s {
			t.Fatalf("the rendering of a token depends on its credentials:\n%s\n%s", r, s)
		}
		noRawSecret(t, "rendering", render(tok), access, refresh)
	})
}

// fromRefresher asks a new Source, whose Refresher returns tok, for a token
// twice (the second time tests that an unusable token is not handed out
// later either) and returns the first result with everything it logged.
func fromRefresher(t *testing.T, tok *tokensource.Token) (*tokensource.Token, string, error) {
	t.Helper()
	var logs bytes.Buffer
	var calls atomic.Int64
	src := tokensource.New(tokensource.RefresherFunc(func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
		calls.Add(1)
		return tok, nil
	}), tokensource.WithClock(func() time.Time { return fuzzNow }),
		tokensource.WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{
			Level: slog.LevelDebug,
			ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey || a.Key == "duration" || a.Key == "retry_in" {
					return slog.Attr{} // differ from run to run
				}
				return a
			},
		}))))
	got, err := src.Token(context.Background())
	again, againErr := src.Token(context.Background())
	_ = src.Close() // waits for the refresh goroutine and its logging
	if err != nil && (again != nil || againErr == nil) {
		t.Fatalf("an unusable token was handed out on the second call: %v, %v", again, againErr)
	}
	if err == nil && again != got {
		t.Fatalf("a usable token was not kept: %p, then %p", got, again)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("the Refresher was called %d times, want 1 (the second call is within the backoff)", n)
	}
	return got, logs.String(), err
}

func setToken(tok *tokensource.Token) error {
	src := tokensource.New(tokensource.RefresherFunc(func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
		return nil, errors.New("not called")
	}), tokensource.WithClock(func() time.Time { return fuzzNow }))
	defer func() { _ = src.Close() }()
	return src.SetToken(context.Background(), tok)
}

// render formats tok every way a program might log it.
func render(tok *tokensource.Token) string {
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})).Info("token", "value", *tok, "pointer", tok)
	return fmt.Sprintf("%v|%+v|%#v|%s|%q|%x|%v|%+v|%#v|%s|%v|", *tok, *tok, *tok, *tok, *tok, *tok, tok, tok, tok, tok,
		[]*tokensource.Token{tok}) + tok.String() + tok.GoString() + logs.String()
}

// shadowOf replaces every visible ASCII character of s by another one and
// keeps every other byte, so the shadow is usable exactly when s is, fails
// at the same offset, and has the same length.
func shadowOf(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 0x21 && c <= 0x7e {
			b[i] = 0x21 + (c-0x21+47)%94
		}
	}
	return string(b)
}

// sameInstant reports whether a and b hold the same credentials expiring
// at the same instant. Two loads of one file are equal tokens but not equal
// structs: each parse of an offset such as +01:30 makes its own
// time.Location.
func sameInstant(a, b *tokensource.Token) bool {
	return a != nil && b != nil && a.AccessToken == b.AccessToken &&
		a.RefreshToken == b.RefreshToken && a.Expiry.Equal(b.Expiry)
}

func visibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// noRawSecret covers what the shadow comparison cannot: the bytes a shadow
// keeps (those outside visible ASCII). A credential with such a byte must
// not appear in out.
func noRawSecret(t *testing.T, what, out string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if len(s) >= 4 && !visibleASCII(s) && strings.Contains(out, s) {
			t.Fatalf("%s contains a credential: %q", what, out)
		}
	}
}

// FuzzFileStoreLoad gives FileStore.Load arbitrary bytes as the token file.
// Load never panics; it returns either a token with an access or a refresh
// token, which Save writes back and Load reads again unchanged, or an error
// matching ErrCorruptStore that quotes nothing from the file. Load never
// modifies or replaces the file, and neither does a Source that cannot load
// it: its callers get the ErrCorruptStore error and its Refresher is not
// called. A Source that can load it hands out the stored token if it is
// usable, and otherwise refreshes with the stored refresh token.
func FuzzFileStoreLoad(f *testing.F) {
	for _, seed := range []string{
		`{"version":1,"access_token":"at_stored","refresh_token":"rt_stored","expiry":"2030-01-02T04:04:05Z"}`,
		`{"version":1,"access_token":"at_stored","expiry":"2030-01-02T03:04:04Z"}`,
		`{"version":1,"refresh_token":"rt_stored"}`,
		`{"version":1,"access_token":"at_no_expiry"}` + "\n",
		`{"version":1,"access_token":"at bad\n","refresh_token":"rt_stored"}`,
		`{"version":1,"access_token":"at_stored","expiry":"2030-01-02T04:04:05.123456789123+23:59"}`,
		`{"version":2,"access_token":"SECRET-ACCESS-123456","refresh_token":"SECRET-REFRESH-654321"}`,
		`{"version":2,"revision":7,"access_token":"at_stored","refresh_token":"rt_stored","expiry":"2030-01-02T04:04:05Z"}`,
		`{"version":2,"revision":3,"refresh_token":"rt_stored"}`,
		`{"version":2,"revision":4,"refresh_token":"rt_stored","restored":true}`,
		`{"version":2,"revision":4,"refresh_token":"rt_stored","restored":"true"}`,
		`{"version":1,"refresh_token":"rt_stored","restored":true}`,
		`{"version":3,"revision":1,"access_token":"SECRET-ACCESS-123456"}`,
		`{"version":1,"revision":2,"access_token":"SECRET-ACCESS-123456"}`,
		`{"version":1,"access_token":"SECRET-ACCESS-123456","extra":"SECRET-EXTRA-000000"}`,
		`{"version":1,"access_token":"SECRET-ACCESS-1234`,
		`{"version":1,"access_token":["SECRET-ACCESS-123456"]}`,
		`{"version":1,"access_token":"SECRET-ACCESS-123456","expiry":"SECRET-EXPIRY-ABCDEF"}`,
		`{"version":1,"access_token":"SECRET-ACCESS-123456"} {"version":1}`,
		`{"version":1,"access_token":"SECRET-ACCESS-123456"} SECRET-TRAILER-9999`,
		`{"version":1}`,
		`{}`,
		`null`,
		`[]`,
		`"SECRET-STRING-123456"`,
		``,
		"\x00\xff",
	} {
		f.Add([]byte(seed))
	}
	references := corruptMessages(f)

	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "token.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		store := tokensource.NewFileStore(path)
		tok, err := store.Load(context.Background())
		assertUntouched(t, dir, path, data)

		if err != nil {
			if tok != nil {
				t.Fatalf("Load returned a token and an error: %v", err)
			}
			if !errors.Is(err, tokensource.ErrCorruptStore) {
				t.Fatalf("Load error does not match ErrCorruptStore: %v", err)
			}
			msg := strings.ReplaceAll(err.Error(), path, "")
			for _, s := range secretCandidates(data) {
				if strings.Contains(msg, s) && !strings.Contains(references, s) {
					t.Fatalf("the error quotes %q from the file: %v", s, err)
				}
			}
			// A Source cannot use the store: it fails, calls no Refresher
			// and leaves the file alone.
			var calls atomic.Int64
			src := tokensource.New(tokensource.RefresherFunc(func(context.Context, *tokensource.Token) (*tokensource.Token, error) {
				calls.Add(1)
				return &tokensource.Token{AccessToken: "at_fresh", RefreshToken: "rt_fresh", Expiry: fuzzNow.Add(time.Hour)}, nil
			}), tokensource.WithStore(store), tokensource.WithClock(func() time.Time { return fuzzNow }))
			_, serr := src.Token(context.Background())
			_ = src.Close()
			if !errors.Is(serr, tokensource.ErrCorruptStore) || calls.Load() != 0 {
				t.Fatalf("a Source with a corrupt store: Token error %v, %d Refresher calls", serr, calls.Load())
			}
			assertUntouched(t, dir, path, data)
			return
		}

		if tok == nil || (tok.AccessToken == "" && tok.RefreshToken == "") {
			t.Fatalf("Load of an existing file returned %v without an error", tok)
		}
		// What Load accepts, Save writes and Load reads back unchanged.
		copyPath := filepath.Join(t.TempDir(), "copy.json")
		cp := tokensource.NewFileStore(copyPath)
		if err := cp.Save(context.Background(), tok); err != nil {
			t.Fatalf("Save of a loaded token: %v", err)
		}
		again, err := cp.Load(context.Background())
		if err != nil || again.AccessToken != tok.AccessToken || again.RefreshToken != tok.RefreshToken || !again.Expiry.Equal(tok.Expiry) {
			t.Fatalf("round trip: %+v, %v; want %+v", again, err, tok)
		}

		// A Source takes the stored token, or refreshes with its refresh
		// token.
		usable := tok.AccessToken != "" && visibleASCII(tok.AccessToken) && (tok.Expiry.IsZero() || fuzzNow.Before(tok.Expiry))
		var mu sync.Mutex
		var seen []*tokensource.Token
		fresh := &tokensource.Token{AccessToken: "at_fresh", RefreshToken: "rt_fresh", Expiry: fuzzNow.Add(time.Hour)}
		src := tokensource.New(tokensource.RefresherFunc(func(_ context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
			mu.Lock()
			seen = append(seen, cur)
			mu.Unlock()
			return fresh, nil
		}), tokensource.WithStore(store), tokensource.WithClock(func() time.Time { return fuzzNow }))
		got, err := src.Token(context.Background())
		_ = src.Close()
		if err != nil {
			t.Fatalf("Source with a loadable store: %v", err)
		}
		if usable {
			if len(seen) != 0 || !sameInstant(got, tok) {
				t.Fatalf("a usable stored token was not handed out: got %+v after %d refreshes", got, len(seen))
			}
			assertUntouched(t, dir, path, data)
			return
		}
		if len(seen) != 1 || seen[0] == nil || seen[0].RefreshToken != tok.RefreshToken || !sameInstant(got, fresh) {
			t.Fatalf("an unusable stored token: refreshed with %v, got %+v", seen, got)
		}
		saved, err := store.Load(context.Background())
		if err != nil || !sameInstant(saved, fresh) {
			t.Fatalf("the refreshed token was not saved: %+v, %v", saved, err)
		}
	})
}

// assertUntouched fails unless the file at path still holds data with mode
// 0600 and is the only file in dir.
func assertUntouched(t *testing.T, dir, path string, data []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the token file changed: %q, %v", got, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the token file's mode: %v, %v", fi.Mode(), err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Fatalf("the directory holds %d entries (%v), want only the token file", len(entries), err)
	}
}

// secretCandidates returns the runs of credential-like characters of at
// least 12 bytes in data.
func secretCandidates(data []byte) []string {
	var out []string
	start := -1
	for i := 0; i <= len(data); i++ {
		credential := i < len(data) && (data[i] >= 'a' && data[i] <= 'z' || data[i] >= 'A' && data[i] <= 'Z' ||
			data[i] >= '0' && data[i] <= '9' || data[i] == '-' || data[i] == '_' || data[i] == '.' || data[i] == '~')
		switch {
		case credential && start < 0:
			start = i
		case !credential && start >= 0:
			if i-start >= 12 {
				out = append(out, string(data[start:i]))
			}
			start = -1
		}
	}
	return out
}

// corruptMessages returns the error messages Load gives for one file of each
// kind of corruption, without their path: text that FuzzFileStoreLoad does
// not count as quoting the file when a fuzzed file happens to contain it.
func corruptMessages(f *testing.F) string {
	dir := f.TempDir()
	path := filepath.Join(dir, "reference.json")
	var msgs []string
	for _, data := range []string{
		``, `{`, `x`, `null`, `[]`, `{"version":1}`, `{"version":2,"access_token":"a"}`, `{"x":1}`,
		`{"version":3,"revision":1,"access_token":"a"}`, `{"version":1,"revision":2,"access_token":"a"}`,
		`{"version":2,"revision":"1"}`,
		`{"version":"1"}`, `{"version":1,"access_token":1}`, `{"version":1,"refresh_token":1}`,
		`{"version":1,"expiry":1}`, `{"version":1,"expiry":"x"}`, `{"version":1,"access_token":"a"} {}`,
	} {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			f.Fatal(err)
		}
		if _, err := tokensource.NewFileStore(path).Load(context.Background()); err != nil {
			msgs = append(msgs, strings.ReplaceAll(err.Error(), path, ""))
		}
	}
	return strings.Join(msgs, "\n")
}

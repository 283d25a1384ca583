package tokensource

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
)

func tokenFile(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "token.json")
}

func sameToken(a, b *Token) bool {
	return a != nil && b != nil && a.AccessToken == b.AccessToken &&
		a.RefreshToken == b.RefreshToken && a.Expiry.Equal(b.Expiry)
}

func TestFileStoreRoundTrip(t *testing.T) {
	path := tokenFile(t)
	fs := NewFileStore(path)
	if got, err := fs.Load(ctxBG); got != nil || err != nil {
		t.Fatalf("Load of a missing file = (%v, %v), want (nil, nil)", got, err)
	}
	for _, want := range []*Token{
		{AccessToken: "a1", RefreshToken: "r1", Expiry: time.Date(2030, 1, 1, 12, 0, 0, 123, time.UTC)},
		{AccessToken: "a2"}, // no refresh token, never expires
		{RefreshToken: "r3"},
	} {
		if err := fs.Save(ctxBG, want); err != nil {
			t.Fatal(err)
		}
		got, err := fs.Load(ctxBG)
		if err != nil || !sameToken(got, want) {
			t.Fatalf("Load = (%v, %v), want %v", got, err, want)
		}
		if got == want {
			t.Error("Load returned the saved pointer, want a fresh token")
		}
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := info.Mode().Perm(); mode != 0o600 {
		t.Errorf("file mode = %o, want 600", mode)
	}
	assertOnlyFile(t, path)
}

// assertOnlyFile checks that path is the only file in its directory besides
// its lock file: no temporary file was left behind.
func assertOnlyFile(t *testing.T, path string) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	entries = slices.DeleteFunc(entries, func(e os.DirEntry) bool { return e.Name() == filepath.Base(path)+".lock" })
	if len(entries) != 1 || entries[0].Name() != filepath.Base(path) {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want only %s", names, filepath.Base(path))
	}
}

func TestFileStoreFixesLooseMode(t *testing.T) {
	path := tokenFile(t)
	if err := os.WriteFile(path, []byte(`{"version":1,"access_token":"a"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := NewFileStore(path).Save(ctxBG, &Token{AccessToken: "b"}); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := info.Mode().Perm(); mode != 0o600 {
		t.Errorf("file mode after Save = %o, want 600", mode)
	}
}

func TestFileStoreRefusesCorruptFile(t *testing.T) {
	const secret = "Zm9vYmFy-secret"
	cases := map[string]string{
		"empty":           "",
		"garbage":         "not json " + secret,
		"truncated":       `{"version":1,"access_token":"` + secret,
		"bad escape":      `{"version":1,"access_token":"` + secret + `\q"}`,
		"wrong type":      `{"version":1,"access_token":42}`,
		"bad expiry":      `{"version":1,"access_token":"` + secret + `","expiry":"tomorrow"}`,
		"unknown field":   `{"version":1,"access_token":"` + secret + `","token":"` + secret + `"}`,
		"no version":      `{"access_token":"` + secret + `"}`,
		"future version":  `{"version":3,"revision":1,"access_token":"` + secret + `"}`,
		"v2 no revision":  `{"version":2,"access_token":"` + secret + `"}`,
		"v1 revision":     `{"version":1,"revision":5,"access_token":"` + secret + `"}`,
		"bad revision":    `{"version":2,"revision":-1,"access_token":"` + secret + `"}`,
		"v1 restored":     `{"version":1,"access_token":"` + secret + `","restored":true}`,
		"bad restored":    `{"version":2,"revision":1,"access_token":"` + secret + `","restored":1}`,
		"no tokens":       `{"version":1}`,
		"trailing data":   `{"version":1,"access_token":"a"} {"version":1}`,
		"array":           `["` + secret + `"]`,
		"null":            `null`,
		"binary":          "\x00\x01\x02" + secret,
		"refresh as list": `{"version":1,"refresh_token":["` + secret + `"]}`,
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			path := tokenFile(t)
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := NewFileStore(path).Load(ctxBG)
			if !errors.Is(err, ErrCorruptStore) || got != nil {
				t.Fatalf("Load = (%v, %v), want ErrCorruptStore", got, err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error quotes the file: %v", err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			after, _ := os.ReadFile(path)
			if string(after) != content {
				t.Error("Load modified the corrupt file")
			}
		})
	}
}

func TestFileStoreFailedRenameKeepsOldToken(t *testing.T) {
	path := tokenFile(t)
	fs := NewFileStore(path)
	old := &Token{AccessToken: "old", RefreshToken: "old-refresh"}
	if err := fs.Save(ctxBG, old); err != nil {
		t.Fatal(err)
	}
	errCrash := errors.New("simulated crash before rename")
	var tmpSeen string
	fs.rename = func(oldpath, _ string) error {
		// The new token was written and synced to the temporary file.
		data, err := os.ReadFile(oldpath)
		if err != nil || !strings.Contains(string(data), "new-refresh") {
			t.Errorf("temporary file not fully written before rename: %q, %v", data, err)
		}
		tmpSeen = oldpath
		return errCrash
	}
	if err := fs.Save(ctxBG, &Token{AccessToken: "new", RefreshToken: "new-refresh"}); !errors.Is(err, errCrash) {
		t.Fatalf("Save = %v, want the rename error", err)
	}
	if filepath.Dir(tmpSeen) != filepath.Dir(path) {
		t.Errorf("temporary file %s is not in the target's directory (rename would not be atomic)", tmpSeen)
	}
	got, err := NewFileStore(path).Load(ctxBG)
	if err != nil || !sameToken(got, old) {
		t.Fatalf("after a failed Save, Load = (%v, %v), want the old token", got, err)
	}
	assertOnlyFile(t, path)
}

func TestFileStoreSurvivesCrashBetweenWriteAndRename(t *testing.T) {
	path := tokenFile(t)
	old := &Token{AccessToken: "old", RefreshToken: "old-refresh"}
	if err := NewFileStore(path).Save(ctxBG, old); err != nil {
		t.Fatal(err)
	}
	// A process that crashed after writing (part of) its temporary file but
	// before the rename leaves that file behind; nothing cleans it up.
	leftover := filepath.Join(filepath.Dir(path), ".token.json.tmp-123456")
	if err := os.WriteFile(leftover, []byte(`{"version":1,"access_token":"new","refresh_tok`), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := NewFileStore(path) // the restarted process
	got, err := fs.Load(ctxBG)
	if err != nil || !sameToken(got, old) {
		t.Fatalf("Load after the crash = (%v, %v), want the old token", got, err)
	}
	next := &Token{AccessToken: "next", RefreshToken: "next-refresh"}
	if err := fs.Save(ctxBG, next); err != nil {
		t.Fatal(err)
	}
	if got, err := fs.Load(ctxBG); err != nil || !sameToken(got, next) {
		t.Fatalf("Load = (%v, %v), want the new token", got, err)
	}
}

func TestFileStoreMissingDirectory(t *testing.T) {
	fs := NewFileStore(filepath.Join(t.TempDir(), "no-such-dir", "token.json"))
	if err := fs.Save(ctxBG, &Token{AccessToken: "a"}); err == nil {
		t.Fatal("Save into a missing directory succeeded")
	}
	if got, err := fs.Load(ctxBG); got != nil || err != nil {
		t.Fatalf("Load = (%v, %v), want (nil, nil)", got, err)
	}
}

func TestStoresRefuseNilAndCancelledContext(t *testing.T) {
	cancelled, cancel := context.WithCancel(ctxBG)
	cancel()
	for name, st := range map[string]Store{"memory": NewMemoryStore(), "file": NewFileStore(tokenFile(t))} {
		if err := st.Save(ctxBG, nil); err == nil {
			t.Errorf("%s: Save(nil) succeeded", name)
		}
		if err := st.Save(cancelled, &Token{AccessToken: "a"}); !errors.Is(err, context.Canceled) {
			t.Errorf("%s: Save with a cancelled ctx = %v", name, err)
		}
		if _, err := st.Load(cancelled); !errors.Is(err, context.Canceled) {
			t.Errorf("%s: Load with a cancelled ctx = %v", name, err)
		}
	}
}

func TestMemoryStoreCopies(t *testing.T) {
	m := NewMemoryStore()
	tok := &Token{AccessToken: "a"}
	if err := m.Save(ctxBG, tok); err != nil {
		t.Fatal(err)
	}
	tok.AccessToken = "mutated"
	got, _ := m.Load(ctxBG)
	if got.AccessToken != "a" {
		t.Errorf("MemoryStore kept the caller's pointer")
	}
}

// countingStore wraps a Store and counts calls; saveHook runs before Save.
type countingStore struct {
	Store
	loads, saves atomic.Int64
	saveHook     func(*Token) error
}

func (c *countingStore) Load(ctx context.Context) (*Token, error) {
	c.loads.Add(1)
	return c.Store.Load(ctx)
}

func (c *countingStore) Save(ctx context.Context, t *Token) error {
	c.saves.Add(1)
	if c.saveHook != nil {
		if err := c.saveHook(t); err != nil {
			return err
		}
	}
	return c.Store.Save(ctx, t)
}

func TestSourceLoadsStoreOnceAndPrefersIt(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	path := tokenFile(t)
	stored := &Token{AccessToken: "stored", RefreshToken: "stored-refresh", Expiry: clk.Now().Add(time.Hour)}
	if err := NewFileStore(path).Save(ctxBG, stored); err != nil {
		t.Fatal(err)
	}
	st := &countingStore{Store: NewFileStore(path)}
	r := sequence(clk.Now, time.Hour)
	var evs events
	s := New(r, WithClock(clk.Now), WithStore(st), WithObserver(evs.observe),
		WithInitialToken(&Token{AccessToken: "initial", Expiry: clk.Now().Add(time.Hour)}))
	defer mustClose(t, s)
	tok, err := s.Token(ctxBG)
	if err != nil || tok.AccessToken != "stored" {
		t.Fatalf("Token = (%v, %v), want the stored token", tok, err)
	}
	if r.calls.Load() != 0 {
		t.Error("a valid stored token was refreshed")
	}
	if _, err := s.Refresh(ctxBG, tok); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Hour)
	if _, err := s.Token(ctxBG); err != nil {
		t.Fatal(err)
	}
	if got := st.loads.Load(); got != 1 {
		t.Errorf("store loaded %d times, want 1", got)
	}
	if got := st.saves.Load(); got != 2 {
		t.Errorf("store saved %d times, want 2 (one per refresh)", got)
	}
	// A new process picks up the rotated refresh token.
	got, err := NewFileStore(path).Load(ctxBG)
	if err != nil || got.RefreshToken != "refresh-2" {
		t.Fatalf("file holds (%v, %v), want the latest rotated refresh token", got, err)
	}
	mustClose(t, s)
	if l := evs.of(TokenLoaded); len(l) != 1 || !l[0].Expiry.Equal(stored.Expiry) {
		t.Errorf("TokenLoaded events = %+v", l)
	}
}

func TestSourceRefreshesExpiredStoredToken(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	st := NewMemoryStore()
	if err := st.Save(ctxBG, &Token{AccessToken: "stored", RefreshToken: "stored-refresh", Expiry: clk.Now().Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	var seen *Token
	r := &counter{fn: func(_ context.Context, cur *Token) (*Token, error) {
		seen = cur
		return &Token{AccessToken: "new", RefreshToken: "new-refresh", Expiry: clk.Now().Add(time.Hour)}, nil
	}}
	s := New(r, WithClock(clk.Now), WithStore(st), WithInitialToken(&Token{RefreshToken: "initial-refresh"}))
	defer mustClose(t, s)
	if tok, err := s.Token(ctxBG); err != nil || tok.AccessToken != "new" {
		t.Fatalf("Token = (%v, %v)", tok, err)
	}
	if seen == nil || seen.RefreshToken != "stored-refresh" {
		t.Errorf("Refresher got %v, want the stored token", seen)
	}
}

func TestSourceUsesInitialTokenWhenStoreIsEmpty(t *testing.T) {
	st := &countingStore{Store: NewMemoryStore()}
	r := sequence(time.Now, time.Hour)
	s := New(r, WithStore(st), WithInitialToken(&Token{AccessToken: "initial", Expiry: time.Now().Add(time.Hour)}))
	defer mustClose(t, s)
	if tok, err := s.Token(ctxBG); err != nil || tok.AccessToken != "initial" {
		t.Fatalf("Token = (%v, %v), want the initial token", tok, err)
	}
	if r.calls.Load() != 0 || st.loads.Load() != 1 {
		t.Errorf("calls=%d loads=%d, want 0 and 1", r.calls.Load(), st.loads.Load())
	}
}

func TestSourceSavesBeforeHandingOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		saving := make(chan *Token)
		proceed := make(chan struct{})
		st := &countingStore{Store: NewMemoryStore(), saveHook: func(tok *Token) error {
			saving <- tok
			<-proceed
			return nil
		}}
		s := New(sequence(time.Now, time.Hour), WithStore(st))
		defer mustClose(t, s)
		got := make(chan *Token, 1)
		go func() {
			tok, _ := s.Token(ctxBG)
			got <- tok
		}()
		saved := <-saving
		synctest.Wait() // the Save is blocked: the caller must still be waiting
		select {
		case <-got:
			t.Fatal("the token was handed out before the store saved it")
		default:
		}
		close(proceed)
		if tok := <-got; tok != saved {
			t.Errorf("handed out %v, saved %v", tok, saved)
		}
	})
}

func TestSourceKeepsTokenWhenSaveFails(t *testing.T) {
	errDisk := errors.New("disk full")
	st := &countingStore{Store: NewMemoryStore(), saveHook: func(*Token) error { return errDisk }}
	var evs events
	var logs bytes.Buffer
	r := &counter{fn: func(context.Context, *Token) (*Token, error) {
		return &Token{AccessToken: secretAccess, RefreshToken: secretRefresh, Expiry: time.Now().Add(time.Hour)}, nil
	}}
	s := New(r, WithStore(st), WithObserver(evs.observe), WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	tok, err := s.Token(ctxBG)
	if err != nil || tok.AccessToken != secretAccess {
		t.Fatalf("Token = (%v, %v), want the new token despite the failed save", tok, err)
	}
	if got := s.Stats().StoreFailures; got != 1 {
		t.Errorf("StoreFailures = %d, want 1", got)
	}
	mustClose(t, s)
	if f := evs.of(StoreFailed); len(f) != 1 || !errors.Is(f[0].Err, errDisk) {
		t.Errorf("StoreFailed events = %+v", f)
	}
	if !strings.Contains(logs.String(), "disk full") {
		t.Errorf("the save failure was not logged:\n%s", logs.String())
	}
	assertNoSecret(t, "log", logs.String())
}

func TestSourceRefusesCorruptStore(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	path := tokenFile(t)
	const content = `{"version":1,"refresh_token":"rt-` // truncated
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	r := sequence(clk.Now, time.Hour)
	s := New(r, WithClock(clk.Now), WithStore(NewFileStore(path)))
	defer mustClose(t, s)
	for range 2 {
		if _, err := s.Token(ctxBG); !errors.Is(err, ErrCorruptStore) {
			t.Fatalf("Token = %v, want ErrCorruptStore", err)
		}
		clk.Advance(time.Minute) // past the backoff: loads again
	}
	if r.calls.Load() != 0 {
		t.Error("refreshed without the stored refresh token")
	}
	if data, _ := os.ReadFile(path); string(data) != content {
		t.Error("the corrupt file was overwritten")
	}
	// Logging in again (SetToken) deliberately replaces it.
	if err := s.SetToken(ctxBG, &Token{AccessToken: "login", RefreshToken: "login-refresh"}); err != nil {
		t.Fatal(err)
	}
	if got, err := NewFileStore(path).Load(ctxBG); err != nil || got.RefreshToken != "login-refresh" {
		t.Fatalf("file after SetToken = (%v, %v)", got, err)
	}
}

func TestSetTokenReportsSaveFailure(t *testing.T) {
	errDisk := errors.New("disk full")
	st := &countingStore{Store: NewMemoryStore(), saveHook: func(*Token) error { return errDisk }}
	s := New(sequence(time.Now, time.Hour), WithStore(st))
	defer mustClose(t, s)
	err := s.SetToken(ctxBG, &Token{AccessToken: "login"})
	if !errors.Is(err, errDisk) {
		t.Fatalf("SetToken = %v, want the save error", err)
	}
	if tok, err := s.Token(ctxBG); err != nil || tok.AccessToken != "login" {
		t.Errorf("Token = (%v, %v), want the token installed despite the failed save", tok, err)
	}
	if st.loads.Load() != 0 {
		t.Error("the store was loaded after SetToken (it would replace the newer token)")
	}
}

func TestLogsNeverContainTokens(t *testing.T) {
	clk := testutil.NewClock(testutil.Epoch)
	var logs bytes.Buffer
	n := 0
	r := &counter{fn: func(_ context.Context, cur *Token) (*Token, error) {
		n++
		switch n {
		case 1:
			return &Token{AccessToken: secretAccess, RefreshToken: secretRefresh, Expiry: clk.Now().Add(time.Hour)}, nil
		case 2:
			return &Token{AccessToken: secretAccess + "\n", RefreshToken: secretRefresh}, nil
		default:
			return nil, Permanent(errors.New("invalid_grant"))
		}
	}}
	s := New(r, WithClock(clk.Now), WithInitialToken(&Token{RefreshToken: secretRefresh}),
		WithLogger(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	tok, err := s.Token(ctxBG)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Refresh(ctxBG, tok); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("Refresh = %v", err)
	}
	clk.Advance(2 * time.Hour)
	if _, err := s.Token(ctxBG); !errors.Is(err, ErrReauthRequired) {
		t.Fatalf("Token = %v", err)
	}
	mustClose(t, s)
	out := logs.String()
	for _, want := range []string{"token refreshed", "token refresh failed", "re-authentication required"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	assertNoSecret(t, "log", out)
}

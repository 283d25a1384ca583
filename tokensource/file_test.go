package tokensource

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
)

// jwtFor returns a signed JWT expiring at exp, with a distinct jti.
func jwtFor(t testing.TB, exp time.Time) string {
	t.Helper()
	return signedJWT(t, jwt.Claims{Issuer: "https://kubernetes.test", Subject: "system:serviceaccount:default:app",
		ID: fmt.Sprint(time.Now().UnixNano()), Expiry: jwt.NewNumericDate(exp)})
}

// The expiry of a JWT is its exp claim; of an opaque token, the file's
// modification time plus the configured lifetime; surrounding white space
// (a trailing newline) is not part of the token.
func TestFromFileExpiry(t *testing.T) {
	dir := t.TempDir()
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	jwtPath := filepath.Join(dir, "jwt")
	tok := jwtFor(t, exp)
	writeFile(t, jwtPath, tok+"\n")
	got, err := FromFile(jwtPath, WithTokenLifetime(time.Minute)).Refresh(ctxBG, nil)
	if err != nil || got.AccessToken != tok || !got.Expiry.Equal(exp) {
		t.Fatalf("JWT file: %v, %v; want the token expiring at its exp %v (exp wins over the lifetime)", got, err, exp)
	}

	opaquePath := filepath.Join(dir, "opaque")
	writeFile(t, opaquePath, "hvs.opaque-token\n")
	mtime := time.Now().Add(-time.Minute).Truncate(time.Second)
	if err := os.Chtimes(opaquePath, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	got, err = FromFile(opaquePath, WithTokenLifetime(time.Hour)).Refresh(ctxBG, nil)
	if err != nil || got.AccessToken != "hvs.opaque-token" || !got.Expiry.Equal(mtime.Add(time.Hour)) {
		t.Fatalf("opaque file: %v, %v; want expiry mtime+1h = %v", got, err, mtime.Add(time.Hour))
	}
	_, err = FromFile(opaquePath).Refresh(ctxBG, nil)
	checkFileError(t, "opaque without lifetime", err, opaquePath, "hvs.opaque-token")
	if !strings.Contains(fmt.Sprint(err), "WithTokenLifetime") {
		t.Errorf("%v: should say what to configure", err)
	}
	writeFile(t, opaquePath, "hvs.opaque-token")
	_, err = FromFile(opaquePath, WithTokenLifetime(time.Hour)).Refresh(ctxBG, nil)
	if err != nil {
		t.Errorf("a freshly written opaque token: %v", err)
	}
	if err := os.Chtimes(opaquePath, mtime, mtime.Add(-2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(opaquePath, mtime.Add(-2*time.Hour), mtime.Add(-2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	_, err = FromFile(opaquePath, WithTokenLifetime(time.Hour)).Refresh(ctxBG, nil)
	checkFileError(t, "opaque older than its lifetime", err, opaquePath, "hvs.opaque-token")
}

// A missing, empty, half-written or expired file, a directory, a JWT
// without exp: each is a transient error matching ErrTokenFile that names
// the path and not the content; through a Source it is Unavailable-class
// (not ErrReauthRequired), nothing hangs, and the Source recovers once the
// file is fixed.
func TestFromFileBadInput(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	good := jwtFor(t, time.Now().Add(time.Hour))
	expired := jwtFor(t, time.Now().Add(-time.Second))
	noExp := signedJWT(t, jwt.Claims{Subject: "x"})
	cases := []struct {
		name    string
		prepare func()
		content string
	}{
		{"missing", func() {}, ""},
		{"empty", func() { writeFile(t, path, "") }, ""},
		{"blank", func() { writeFile(t, path, " \n") }, ""},
		{"half-written", func() { writeFile(t, path, good[:len(good)*2/3]) }, good[:len(good)*2/3]},
		{"expired", func() { writeFile(t, path, expired) }, expired},
		{"no exp", func() { writeFile(t, path, noExp) }, noExp},
		{"directory", func() {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_ = os.RemoveAll(path)
			tc.prepare()
			s := New(FromFile(path), WithBackoff(time.Millisecond, time.Millisecond), WithRefreshAttempts(1))
			defer s.Close()
			_, err := s.Token(ctxBG)
			checkFileError(t, tc.name, err, path, tc.content)
			if errors.Is(err, ErrReauthRequired) || s.Stats().ReauthRequired {
				t.Errorf("%v: a file problem must not require re-authentication", err)
			}
			_ = os.RemoveAll(path)
			writeFile(t, path, good)
			deadline := time.Now().Add(10 * time.Second) // a hang guard, not a timing assertion
			for {
				tok, err := s.Token(ctxBG)
				if err == nil {
					if tok.AccessToken != good {
						t.Fatal("recovered with the wrong token")
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no recovery after the file was fixed: %v", err)
				}
				time.Sleep(time.Millisecond) // past the 1 ms backoff
			}
		})
	}
}

// A file that changes while it is read is refused as half-written; read
// again once it is complete, it is used.
func TestFromFileChangedWhileRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	good := jwtFor(t, time.Now().Add(time.Hour))
	f := &watchedFile{path: path}
	// An in-place writer: truncate, then write in two halves. A read between
	// them sees a prefix (an incomplete JWT) or a file that grows under it.
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for !stop.Load() {
			w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = w.WriteString(good[:len(good)/2])
			_, _ = w.WriteString(good[len(good)/2:])
			_ = w.Close()
		}
	})
	var complete, refused int
	for range 2000 {
		r, err := f.read(time.Now())
		switch {
		case err == nil && r.token == good:
			complete++
		case err == nil:
			t.Fatalf("read a token that is not the file's whole content (%d of %d bytes)", len(r.token), len(good))
		case errors.Is(err, ErrTokenFile):
			refused++
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d complete reads, %d refused as missing, empty or half-written", complete, refused)
	if _, err := f.read(time.Now()); err != nil {
		t.Errorf("once written: %v", err)
	}
}

// kubeletDir lays out a projected-volume directory as kubelet's
// AtomicWriter does: the payload in a timestamped directory, ..data a
// symlink to it, and the token path a symlink to ..data/token.
type kubeletDir struct {
	dir string
	n   int
}

func newKubeletDir(t testing.TB, token string) *kubeletDir {
	t.Helper()
	k := &kubeletDir{dir: t.TempDir()}
	k.write(t, token)
	if err := os.Symlink(filepath.Join("..data", "token"), filepath.Join(k.dir, "token")); err != nil {
		t.Fatal(err)
	}
	return k
}

func (k *kubeletDir) path() string { return filepath.Join(k.dir, "token") }

// write swaps in token: a new timestamped directory, a new symlink
// ..data_tmp to it renamed over ..data (atomic), the old directory removed.
func (k *kubeletDir) write(t testing.TB, token string) {
	t.Helper()
	k.n++
	ts := fmt.Sprintf("..%s_%d", time.Now().UTC().Format("2006_01_02_15_04_05"), k.n)
	if err := os.Mkdir(filepath.Join(k.dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(k.dir, ts, "token"), token)
	old, _ := os.Readlink(filepath.Join(k.dir, "..data"))
	tmp := filepath.Join(k.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(k.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(k.dir, old)); err != nil {
			t.Fatal(err)
		}
	}
}

// vaultWrite replaces path as a Vault agent's file sink does: a temporary
// file in the same directory, renamed over it.
func vaultWrite(t testing.TB, path, token string) {
	t.Helper()
	tmp := path + fmt.Sprintf(".tmp.%d", time.Now().UnixNano())
	writeFile(t, tmp, token)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// Kubelet's ..data swap and a Vault agent's rename are atomic: reads that
// race with either see the old or the new token, never an error, and a
// refresh after the swap returns the new one.
func TestFromFileSeesAtomicRotations(t *testing.T) {
	for _, how := range []string{"kubelet", "vault"} {
		t.Run(how, func(t *testing.T) {
			var path string
			var rotate func(string)
			first := jwtFor(t, time.Now().Add(time.Hour))
			if how == "kubelet" {
				k := newKubeletDir(t, first)
				path, rotate = k.path(), func(tok string) { k.write(t, tok) }
			} else {
				path = filepath.Join(t.TempDir(), "token")
				writeFile(t, path, first)
				rotate = func(tok string) { vaultWrite(t, path, tok) }
			}
			r := FromFile(path)
			var stop atomic.Bool
			var wg sync.WaitGroup
			var reads, failures atomic.Int64
			for range 4 {
				wg.Go(func() {
					for !stop.Load() {
						reads.Add(1)
						if _, err := r.Refresh(ctxBG, nil); err != nil {
							failures.Add(1)
							t.Errorf("read during rotation: %v", err)
							return
						}
					}
				})
			}
			last := first
			for range 50 {
				last = jwtFor(t, time.Now().Add(time.Hour))
				rotate(last)
			}
			stop.Store(true)
			wg.Wait()
			got, err := r.Refresh(ctxBG, nil)
			if err != nil || got.AccessToken != last {
				t.Fatalf("after the rotations: %v; want the last token", err)
			}
			t.Logf("%d reads during 50 rotations, %d failed", reads.Load(), failures.Load())
		})
	}
}

// After a server rejected the token: a file that still holds it is
// reported as ErrUnchangedToken (not retried with the same token); once the
// sidecar has written a new one, the next forced refresh returns it.
func TestFromFileUnchangedAfterRejection(t *testing.T) {
	k := newKubeletDir(t, jwtFor(t, time.Now().Add(time.Hour)))
	reads := &counter{fn: FromFile(k.path()).Refresh}
	s := New(reads, WithMinRefreshInterval(time.Millisecond), WithBackoff(time.Millisecond, time.Millisecond))
	defer s.Close()
	tok, err := s.Token(ctxBG)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Refresh(ctxBG, tok); !errors.Is(err, ErrUnchangedToken) {
		t.Fatalf("rejected token still in the file: %v, want ErrUnchangedToken", err)
	}
	next := jwtFor(t, time.Now().Add(time.Hour))
	k.write(t, next)
	deadline := time.Now().Add(10 * time.Second) // hang guard
	for {
		got, err := s.Refresh(ctxBG, tok)
		if err == nil && got.AccessToken == next {
			break
		}
		if err != nil && !errors.Is(err, ErrUnchangedToken) {
			t.Fatalf("after the rotation: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new token was not picked up: %v", err)
		}
		time.Sleep(time.Millisecond) // past the 1 ms backoff
	}
	if st := s.Stats(); st.ReauthRequired {
		t.Error("an unchanged file must not require re-authentication")
	}
}

// An early re-read that finds the same token is not a failure; the file is
// not read again on every call, but later, still before the expiry; the
// renewed token written meanwhile is then picked up.
func TestFromFileEarlyReadOfSameToken(t *testing.T) {
	start := time.Now()
	clock := testutil.NewClock(start)
	exp := start.Add(time.Hour).Truncate(time.Second)
	path := filepath.Join(t.TempDir(), "token")
	first := jwtFor(t, exp)
	writeFile(t, path, first)
	reads := &counter{fn: FromFile(path).Refresh}
	ev := &events{}
	done := make(chan struct{}, 16)
	s := New(reads, WithClock(clock.Now), WithObserver(func(e Event) {
		ev.observe(e)
		if e.Kind == RefreshSucceeded || e.Kind == RefreshFailed {
			done <- struct{}{}
		}
	}))
	defer s.Close()
	if _, err := s.Token(ctxBG); err != nil {
		t.Fatal(err)
	}
	<-done
	// Into the early window (default: 225 s before the 10 s leeway).
	clock.Set(exp.Add(-DefaultExpiryLeeway - DefaultEarlyRefresh + time.Second))
	if tok, _ := s.Token(ctxBG); tok.AccessToken != first {
		t.Fatal("the early window must hand out the current token")
	}
	<-done // the background re-read
	for range 1000 {
		if tok, err := s.Token(ctxBG); err != nil || tok.AccessToken != first {
			t.Fatalf("after the early re-read: %v", err)
		}
	}
	if n := reads.calls.Load(); n != 2 {
		t.Fatalf("%d reads after 1000 calls in the early window, want 2 (no read per call)", n)
	}
	if st := s.Stats(); st.Failures != 0 {
		t.Fatalf("Stats.Failures = %d: finding the same token early is not a failure", st.Failures)
	}
	// The writer renews late; the next look, still before expiry, sees it.
	second := jwtFor(t, exp.Add(time.Hour))
	vaultWrite(t, path, second)
	for {
		if !clock.Now().Before(exp.Add(-time.Second)) {
			t.Fatal("the renewed token was not read before the old one expired")
		}
		for len(done) > 0 {
			<-done
		}
		clock.Advance(5 * time.Second)
		tok, err := s.Token(ctxBG)
		if err != nil {
			t.Fatal(err)
		}
		if tok.AccessToken == second {
			break
		}
		if s.Stats().InFlight {
			<-done // the read this call started
		}
	}
	t.Logf("%d reads in all for one renewal", reads.calls.Load())
}

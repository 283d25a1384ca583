package tokensource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// ErrTokenFile is matched (errors.Is) by the error of a token file that
// cannot be used now: FromFile's, or WithClientAssertionFile's. The file
// is missing, cannot be read, is empty, changed while it was read or holds
// an incomplete JWT (half-written), holds a token whose expiry has passed,
// or holds an opaque token while no lifetime is configured. The error
// names the path and the problem, never the file's content. It is
// transient: the process that writes the file (kubelet, a Vault agent, a
// SPIFFE helper) may not have written it yet or may be late, so the Source
// backs off and reads the file again, and the interceptors report
// codes.Unavailable meanwhile.
var ErrTokenFile = errors.New("tokensource: the token file cannot be used")

// errChangedWhileRead is the cause of a read that saw the file change.
var errChangedWhileRead = errors.New("the file changed while it was read")

// maxTokenFileSize bounds what is read from a token file: a token is a few
// kilobytes at most, and a path pointing at a huge file by mistake must not
// cost the process its memory.
const maxTokenFileSize = 1 << 20

// FromFile returns a Refresher that reads the token in the file at path,
// written and rotated by another process: a Kubernetes projected
// service-account token, a Vault agent sink, a SPIFFE helper's JWT-SVID.
// Each refresh reads the file once, following symlinks, so the Source sees
// the file as it is when it refreshes: both of the atomic ways sidecars
// replace it (kubelet's rename of a new ..data symlink to a new
// timestamped directory, with the token path a symlink through it, and a
// Vault agent's write of a temporary file renamed over the token path)
// leave a complete old or new file at every instant. Surrounding white
// space is removed.
//
// The token's expiry is the exp claim when the token is a JWT, or else the
// file's modification time plus the lifetime given by WithTokenLifetime.
// The claim is read, not verified: the signature is the resource server's
// to check, with keys this process need not hold, and a forged exp could
// only make this Source read its own file sooner or later. Nothing else
// in the token is interpreted.
//
// The Source reads the file only when it refreshes: in the early-refresh
// window, at expiry and after a server rejected the token (Source.Refresh),
// never on the path of an RPC. A refresh that finds the same token again
// is not a failure: the token keeps being used, and because the Source
// sizes the early window by the token's remaining lifetime, the next read
// comes later (after about two thirds of what remained), still before the
// expiry; a writer that renews late (kubelet renews at 80 % of a token's
// lifetime, which may fall inside the window) is seen by one of those
// reads. After a rejection, a file that still holds the rejected token is
// reported as ErrUnchangedToken (Unauthenticated through the
// interceptors): retrying with the same token cannot help, and the Source
// reads the file again after its backoff.
//
// A file that cannot be used (see ErrTokenFile) is a transient failure:
// the Source backs off, the interceptors report codes.Unavailable, and the
// error names the path and the problem, never the content. FromFile never
// returns a Permanent error: only the writer can fix the file, and it
// usually does.
func FromFile(path string, opts ...FileTokenOption) Refresher {
	f := &watchedFile{path: path}
	for _, opt := range opts {
		if opt != nil {
			opt(f)
		}
	}
	return RefresherFunc(func(ctx context.Context, _ *Token) (*Token, error) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		r, err := f.read(time.Now())
		if err != nil {
			return nil, err
		}
		return &Token{AccessToken: r.token, Expiry: r.expiry}, nil
	})
}

// watchedFile reads a token file.
type watchedFile struct {
	path     string
	lifetime time.Duration // of an opaque token (or a JWT without exp), from the file's modification time
}

// fileRead is what one read of a watchedFile found.
type fileRead struct {
	token  string
	expiry time.Time
	jwt    bool
}

// errorf returns an error matching ErrTokenFile about f.
func (f *watchedFile) errorf(format string, args ...any) error {
	return &tokenFileError{path: f.path, problem: fmt.Sprintf(format, args...)}
}

type tokenFileError struct {
	path, problem string
	err           error // the operating system's, if any
}

func (e *tokenFileError) Error() string {
	return "tokensource: token file " + e.path + " " + e.problem
}

func (e *tokenFileError) Is(target error) bool { return target == ErrTokenFile }
func (e *tokenFileError) Unwrap() error        { return e.err }

// signatureAlgorithms are the JWS algorithms a token file's JWT may carry.
// Only the header is checked against them: the signature is not verified.
var signatureAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA, jose.HS256, jose.HS384, jose.HS512,
}

// readTries is how often read opens the file before it gives up on a file
// that is missing or changed while it was read. kubelet removes the old
// timestamped directory right after its ..data swap, so an open that
// resolved the token path through the old ..data can find nothing there;
// opening again resolves the new one. The tries follow each other at once:
// the race lasts microseconds, a sidecar that has not written yet lasts
// longer and is the Source's backoff's to wait for.
const readTries = 3

// read reads the file, at now, and checks what it holds.
func (f *watchedFile) read(now time.Time) (fileRead, error) {
	var raw []byte
	var mtime time.Time
	var err error
	for range readTries {
		if raw, mtime, err = f.readStable(); !errors.Is(err, os.ErrNotExist) && !errors.Is(err, errChangedWhileRead) {
			break
		}
	}
	if err != nil {
		return fileRead{}, err
	}
	tok := strings.TrimSpace(string(raw))
	if tok == "" {
		return fileRead{}, f.errorf("is empty")
	}
	r := fileRead{token: tok}
	if parsed, err := jwt.ParseSigned(tok, signatureAlgorithms); err == nil {
		var c jwt.Claims
		if err := parsed.UnsafeClaimsWithoutVerification(&c); err != nil {
			return fileRead{}, f.errorf("holds a JWT whose claims cannot be read")
		}
		r.jwt = true
		if c.Expiry != nil {
			r.expiry = c.Expiry.Time()
		}
	} else if strings.HasPrefix(tok, "eyJ") {
		// The start of a JSON object in base64url: a JWT, but not a whole
		// one (a writer that does not replace the file atomically is
		// halfway through it, say).
		return fileRead{}, f.errorf("holds an incomplete JWT (half-written?)")
	}
	if r.expiry.IsZero() {
		if f.lifetime <= 0 {
			if r.jwt {
				return fileRead{}, f.errorf("holds a JWT without exp, and no lifetime was configured (WithTokenLifetime)")
			}
			return fileRead{}, f.errorf("holds an opaque token (not a JWT), and no lifetime was configured (WithTokenLifetime)")
		}
		r.expiry = mtime.Add(f.lifetime)
	}
	if !now.Before(r.expiry) {
		return fileRead{}, f.errorf("holds a token that expired at %s (the writer has not renewed it)", r.expiry.UTC().Format(time.RFC3339))
	}
	return r, nil
}

// readStable reads the whole file and its modification time, and fails if
// the file changed while it was read (a writer that rewrites it in place).
func (f *watchedFile) readStable() ([]byte, time.Time, error) {
	file, err := os.Open(f.path)
	if err != nil {
		problem := "cannot be opened"
		if errors.Is(err, os.ErrNotExist) {
			problem = "does not exist (not written yet?)"
		}
		return nil, time.Time{}, &tokenFileError{path: f.path, problem: problem + ": " + osReason(err), err: err}
	}
	defer file.Close()
	before, err := file.Stat()
	if err != nil {
		return nil, time.Time{}, &tokenFileError{path: f.path, problem: "cannot be read: " + osReason(err), err: err}
	}
	if !before.Mode().IsRegular() {
		return nil, time.Time{}, f.errorf("is not a regular file")
	}
	raw, err := io.ReadAll(io.LimitReader(file, maxTokenFileSize+1))
	if err != nil {
		return nil, time.Time{}, &tokenFileError{path: f.path, problem: "cannot be read: " + osReason(err), err: err}
	}
	if len(raw) > maxTokenFileSize {
		return nil, time.Time{}, f.errorf("is larger than %d bytes", maxTokenFileSize)
	}
	after, err := file.Stat()
	if err != nil {
		return nil, time.Time{}, &tokenFileError{path: f.path, problem: "cannot be read: " + osReason(err), err: err}
	}
	if int64(len(raw)) != after.Size() || !after.ModTime().Equal(before.ModTime()) {
		return nil, time.Time{}, &tokenFileError{path: f.path, problem: "changed while it was read (half-written?)", err: errChangedWhileRead}
	}
	return raw, after.ModTime(), nil
}

// osReason is the operating system's reason in err without the path,
// which the caller's message names already.
func osReason(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

package tokensource

import "time"

// FileTokenOption configures FromFile.
type FileTokenOption func(*watchedFile)

// WithTokenLifetime gives the lifetime of a token file's token when the
// token carries none: an opaque token (a Vault token, say), or a JWT
// without an exp claim. The token expires d after the file's modification
// time, when its writer wrote it. A JWT's exp claim, when it has one, takes
// precedence. Without this option such a token is refused with an error
// matching ErrTokenFile. d ≤ 0 is ignored.
func WithTokenLifetime(d time.Duration) FileTokenOption {
	return func(f *watchedFile) {
		if d > 0 {
			f.lifetime = d
		}
	}
}

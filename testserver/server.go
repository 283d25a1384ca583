package testserver

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// Server is the state of the test server: users, issued tokens, fault
// injection settings and counters. It holds no network resources itself;
// Start serves it on an Endpoint, or Register and ServerOptions plug it into a
// grpc.Server the caller runs. A Server may back several endpoints at once and
// all its methods are safe for concurrent use.
type Server struct {
	clock    func() time.Time
	logger   *slog.Logger
	users    map[string]string // read-only after New
	failFunc func(ctx context.Context, refreshToken string) error
	onReject func(ctx context.Context, r Rejection)

	mu             sync.Mutex
	accessTTL      time.Duration
	refreshTTL     time.Duration
	latency        time.Duration
	failN          int
	failCode       codes.Code
	access         map[string]*accessEntry
	refresh        map[string]*refreshEntry
	lastFamily     uint64 // id of the newest token family
	revokedUpTo    uint64 // families with id <= revokedUpTo are revoked (RevokeAll)
	lastSeq        uint64 // sequence number of the newest access token
	expiredUpTo    uint64 // access tokens with seq <= expiredUpTo are expired (ForceExpire)
	rejectAll      bool   // SetRejectAccessTokens
	issuedToPrune  int    // tokens issued since the last prune
	pruneThreshold int

	counters counters
}

// family is every access and refresh token descended from one Login.
type family struct {
	id      uint64
	user    string
	revoked bool
}

type accessEntry struct {
	fam    *family
	seq    uint64
	expiry time.Time
}

type refreshEntry struct {
	fam    *family
	expiry time.Time
	used   bool
}

// pair is a freshly issued token pair.
type pair struct {
	access, refresh       string
	expiry, refreshExpiry time.Time
}

// Token prefixes make the kind of a token obvious in a debugger without
// revealing anything; the random part is base32, legal in HTTP/2 headers.
const (
	accessPrefix  = "at_"
	refreshPrefix = "rt_"
)

// minPruneThreshold is how many tokens are issued between two sweeps of dead
// tokens, so that a long demo does not grow the maps without bound.
const minPruneThreshold = 4096

// New returns a Server configured by opts. See the options for the defaults;
// with none, DefaultUser may log in and access tokens live one minute.
func New(opts ...Option) *Server {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	users := o.users
	if len(users) == 0 {
		users = map[string]string{DefaultUser: DefaultPassword}
	}
	return &Server{
		clock:          o.clock,
		logger:         o.logger,
		users:          maps.Clone(users),
		failFunc:       o.failFunc,
		onReject:       o.onReject,
		accessTTL:      o.accessTTL,
		refreshTTL:     o.refreshTTL,
		latency:        o.refreshLatency,
		failN:          o.failN,
		failCode:       o.failCode,
		access:         make(map[string]*accessEntry),
		refresh:        make(map[string]*refreshEntry),
		pruneThreshold: minPruneThreshold,
		counters:       counters{rpcs: make(map[string]int64)},
	}
}

// SetRefreshLatency changes the wait every later Refresh call makes before it
// is processed (see WithRefreshLatency). Calls already waiting keep their
// latency.
func (s *Server) SetRefreshLatency(d time.Duration) {
	s.mu.Lock()
	s.latency = max(d, 0)
	s.mu.Unlock()
}

// FailNextRefreshes makes the next n Refresh calls fail with code, replacing
// any budget left from earlier (see WithRefreshFailures). n <= 0 cancels the
// injected failures.
func (s *Server) FailNextRefreshes(n int, code codes.Code) {
	s.mu.Lock()
	s.failN = max(n, 0)
	s.failCode = code
	s.mu.Unlock()
}

// SetAccessTokenTTL changes the lifetime of access tokens issued from now
// on. Tokens already issued keep their expiry. A value <= 0 is ignored.
func (s *Server) SetAccessTokenTTL(d time.Duration) {
	if d <= 0 {
		return
	}
	s.mu.Lock()
	s.accessTTL = d
	s.mu.Unlock()
}

// ForceExpire makes every access token issued so far expired from now on,
// whatever the clock says. Refresh tokens are unaffected, so clients can
// refresh.
func (s *Server) ForceExpire() {
	s.mu.Lock()
	s.expiredUpTo = s.lastSeq
	s.mu.Unlock()
	s.logger.Info("all access tokens force-expired")
}

// SetRejectAccessTokens makes the server reject every access token, old or
// new, with codes.Unauthenticated while reject is true, as a server with a
// broken key would. AuthService keeps working, so clients can refresh, only
// to be rejected again.
func (s *Server) SetRejectAccessTokens(reject bool) {
	s.mu.Lock()
	s.rejectAll = reject
	s.mu.Unlock()
}

// RevokeAll revokes every token family issued so far: each access and
// refresh token is rejected from now on, so clients must log in again.
func (s *Server) RevokeAll() {
	s.mu.Lock()
	s.revokedUpTo = s.lastFamily
	s.mu.Unlock()
	s.logger.Info("all token families revoked")
}

// RevokeToken revokes the family of token, which may be an access or a
// refresh token, as the Revoke RPC does. It reports whether token was known.
func (s *Server) RevokeToken(token string) bool {
	s.mu.Lock()
	fam := s.familyOfLocked(token)
	if fam != nil {
		fam.revoked = true
	}
	s.mu.Unlock()
	if fam != nil {
		s.logger.Info("token family revoked", "family", fam.id)
	}
	return fam != nil
}

// IssueToken mints a token pair for user in a new family, as a Login would,
// without an RPC and without checking a password. It counts as no Login. The
// only error is for an empty user.
func (s *Server) IssueToken(user string) (*tokensource.Token, error) {
	if user == "" {
		return nil, errors.New("testserver: IssueToken: empty user name")
	}
	p := s.newFamily(user)
	return &tokensource.Token{AccessToken: p.access, RefreshToken: p.refresh, Expiry: p.expiry}, nil
}

// newFamily starts a token family for user and issues its first pair.
func (s *Server) newFamily(user string) pair {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastFamily++
	return s.issueLocked(&family{id: s.lastFamily, user: user})
}

func (s *Server) issueLocked(fam *family) pair {
	s.maybePruneLocked()
	now := s.clock()
	p := pair{
		access:        accessPrefix + rand.Text(),
		refresh:       refreshPrefix + rand.Text(),
		expiry:        now.Add(s.accessTTL),
		refreshExpiry: now.Add(s.refreshTTL),
	}
	s.lastSeq++
	s.access[p.access] = &accessEntry{fam: fam, seq: s.lastSeq, expiry: p.expiry}
	s.refresh[p.refresh] = &refreshEntry{fam: fam, expiry: p.refreshExpiry}
	return p
}

func (s *Server) revokedLocked(fam *family) bool {
	return fam.revoked || fam.id <= s.revokedUpTo
}

func (s *Server) familyOfLocked(token string) *family {
	if e, ok := s.access[token]; ok {
		return e.fam
	}
	if e, ok := s.refresh[token]; ok {
		return e.fam
	}
	return nil
}

// maybePruneLocked drops tokens that can never be accepted again. A pruned
// token is answered as unknown, which is Unauthenticated like expired or
// revoked, so pruning changes no outcome.
func (s *Server) maybePruneLocked() {
	s.issuedToPrune++
	if s.issuedToPrune < s.pruneThreshold {
		return
	}
	s.issuedToPrune = 0
	now := s.clock()
	for k, e := range s.access {
		if e.seq <= s.expiredUpTo || !now.Before(e.expiry) || s.revokedLocked(e.fam) {
			delete(s.access, k)
		}
	}
	for k, e := range s.refresh {
		if !now.Before(e.expiry) || s.revokedLocked(e.fam) {
			delete(s.refresh, k)
		}
	}
	// Keep sweeps proportional to the live set so a large live set does not
	// make every issue pay for a full scan.
	s.pruneThreshold = max(minPruneThreshold, len(s.access)+len(s.refresh))
}

// checkAccess returns the user an access token was issued to, or why it is
// not accepted.
func (s *Server) checkAccess(token string) (string, rejection) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.access[token]
	switch {
	case s.rejectAll:
		return "", rejectAll
	case !ok:
		return "", rejectUnknown
	case s.revokedLocked(e.fam):
		return "", rejectRevoked
	case e.seq <= s.expiredUpTo || !s.clock().Before(e.expiry):
		return "", rejectExpired
	}
	return e.fam.user, ""
}

// rotate consumes a refresh token and issues the next pair of its family.
// A reused refresh token revokes the family.
func (s *Server) rotate(refreshToken string) (pair, uint64, rejection) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.refresh[refreshToken]
	switch {
	case !ok:
		return pair{}, 0, rejectUnknown
	case s.revokedLocked(e.fam):
		return pair{}, e.fam.id, rejectRevoked
	case e.used:
		e.fam.revoked = true
		return pair{}, e.fam.id, rejectReused
	case !s.clock().Before(e.expiry):
		return pair{}, e.fam.id, rejectExpired
	}
	e.used = true
	return s.issueLocked(e.fam), e.fam.id, ""
}

func (s *Server) refreshLatency() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latency
}

// takeInjectedFailure spends one unit of the failure budget, if any is left.
func (s *Server) takeInjectedFailure() (codes.Code, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failN == 0 {
		return codes.OK, false
	}
	s.failN--
	if s.failCode == codes.OK {
		return codes.Unavailable, true
	}
	return s.failCode, true
}

// Counters is a snapshot of what a Server has seen since New or the last
// ResetCounters. Every field counts answers or requests across all endpoints
// of the Server.
type Counters struct {
	// Logins and LoginsFailed count Login calls that issued a token pair and
	// those that did not.
	Logins, LoginsFailed int64
	// RefreshesOK and RefreshesFailed count Refresh calls that issued a pair
	// and those that did not (injected failures included).
	RefreshesOK, RefreshesFailed int64
	// Revokes counts Revoke calls.
	Revokes int64
	// Unauthenticated counts RPCs answered with codes.Unauthenticated, for
	// any reason and on any service.
	Unauthenticated int64
	// RequestsWithToken and RequestsWithoutToken count RPCs by whether an
	// "authorization" header arrived at all, valid or not.
	RequestsWithToken, RequestsWithoutToken int64
	// RPCs counts RPCs by full method name, such as
	// "/tokenrefresh.echo.v1.EchoService/Echo".
	RPCs map[string]int64
}

type counters struct {
	logins, loginsFailed         atomic.Int64
	refreshesOK, refreshesFailed atomic.Int64
	revokes, unauthenticated     atomic.Int64
	withToken, withoutToken      atomic.Int64

	mu   sync.Mutex
	rpcs map[string]int64
}

// Counters returns a snapshot of the counters. The RPCs map is a copy the
// caller owns.
func (s *Server) Counters() Counters {
	c := &s.counters
	c.mu.Lock()
	rpcs := maps.Clone(c.rpcs)
	c.mu.Unlock()
	return Counters{
		Logins:               c.logins.Load(),
		LoginsFailed:         c.loginsFailed.Load(),
		RefreshesOK:          c.refreshesOK.Load(),
		RefreshesFailed:      c.refreshesFailed.Load(),
		Revokes:              c.revokes.Load(),
		Unauthenticated:      c.unauthenticated.Load(),
		RequestsWithToken:    c.withToken.Load(),
		RequestsWithoutToken: c.withoutToken.Load(),
		RPCs:                 rpcs,
	}
}

// ResetCounters sets every counter back to zero. Tokens are not affected.
func (s *Server) ResetCounters() {
	c := &s.counters
	for _, a := range []*atomic.Int64{
		&c.logins, &c.loginsFailed, &c.refreshesOK, &c.refreshesFailed,
		&c.revokes, &c.unauthenticated, &c.withToken, &c.withoutToken,
	} {
		a.Store(0)
	}
	c.mu.Lock()
	clear(c.rpcs)
	c.mu.Unlock()
}

func (c *counters) countRPC(fullMethod string) {
	c.mu.Lock()
	c.rpcs[fullMethod]++
	c.mu.Unlock()
}

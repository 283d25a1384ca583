package tokensource

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
)

func TestMain(m *testing.M) {
	// The test binary re-executed as a worker process of a FileStore test
	// (filestore_proc_test.go) runs that role instead of the tests.
	testutil.Main(m, testutil.Role(fileStoreHelperEnv, runFileStoreHelper))
}

// counter is a Refresher that counts its calls and delegates to fn.
type counter struct {
	calls atomic.Int64
	fn    func(ctx context.Context, current *Token) (*Token, error)
}

func (c *counter) Refresh(ctx context.Context, current *Token) (*Token, error) {
	c.calls.Add(1)
	return c.fn(ctx, current)
}

// sequence returns a Refresher that hands out "access-1", "access-2", ...
// valid for life after now(), each with a matching refresh token.
func sequence(now func() time.Time, life time.Duration) *counter {
	var n atomic.Int64
	return &counter{fn: func(context.Context, *Token) (*Token, error) {
		i := strconv.FormatInt(n.Add(1), 10)
		return &Token{AccessToken: "access-" + i, RefreshToken: "refresh-" + i, Expiry: now().Add(life)}, nil
	}}
}

// events collects observer events.
type events struct {
	mu  sync.Mutex
	evs []Event
}

func (e *events) observe(ev Event) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

func (e *events) kinds() []EventKind {
	e.mu.Lock()
	defer e.mu.Unlock()
	var ks []EventKind
	for _, ev := range e.evs {
		ks = append(ks, ev.Kind)
	}
	return ks
}

func (e *events) of(k EventKind) []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Event
	for _, ev := range e.evs {
		if ev.Kind == k {
			out = append(out, ev)
		}
	}
	return out
}

func mustClose(t *testing.T, s *Source) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

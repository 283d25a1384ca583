package e2e_test

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// fleetStores are the coordinating stores every fleet test runs on.
var fleetStores = []struct {
	name  string
	store func(tb testing.TB) (string, tokensource.Store)
}{
	{"FileStore", fileFleetStore},
	{"Redis", redisFleetStore},
}

// Token lifetimes are sized for a loaded 2-core machine running 8 race-
// enabled processes: 4 s tokens give a 1 s early window and a 0.4 s leeway,
// several times the RPC latency under that load.
const fleetTokenTTL = 4 * time.Second

// 8 processes × 32 callers across at least 3 expiries make one Refresher call
// per expiry between them, with no failed call and no reuse of a rotated
// refresh token.
func TestFleetOneRefreshPerExpiry(t *testing.T) {
	for _, fs := range fleetStores {
		t.Run(fs.name, func(t *testing.T) {
			cfg := fleetConfig{
				workers: 8, callers: 32, duration: 3*fleetTokenTTL - fleetTokenTTL/4, tokenTTL: fleetTokenTTL,
				grant: "refresh", leaseTTL: 2 * time.Second, store: fs.store,
			}
			f := startFleet(t, cfg)
			calls, failed, stats := f.wait()
			c := f.srv.Counters()
			var refreshes, adopted uint64
			for _, s := range stats {
				refreshes += s.Refreshes
				adopted += s.Adopted
			}
			t.Logf("%d calls, %d failed; server: %d refreshes, %d failed refreshes, %d logins, %d Unauthenticated; members: %d refreshes, %d adoptions",
				calls, failed, c.RefreshesOK, c.RefreshesFailed, c.Logins, c.Unauthenticated, refreshes, adopted)
			if failed != 0 {
				t.Errorf("%d of %d calls failed, want 0", failed, calls)
			}
			if c.RefreshesFailed != 0 || c.Logins != 0 {
				t.Errorf("server saw %d failed refreshes (a reused refresh token revokes the family) and %d logins, want 0 and 0",
					c.RefreshesFailed, c.Logins)
			}
			// Each successful refresh consumed the refresh token of the
			// generation it replaced; a second refresh of any generation
			// would have been a reuse, counted above. So refreshes ==
			// generations: one per expiry (at least 3 in this run).
			if c.RefreshesOK < 3 {
				t.Errorf("%d refreshes, want at least 3 expiries in the run", c.RefreshesOK)
			}
			if refreshes != uint64(c.RefreshesOK) {
				t.Errorf("members counted %d refreshes, the server %d", refreshes, c.RefreshesOK)
			}
			if adopted < uint64(c.RefreshesOK) {
				t.Errorf("%d adoptions for %d refreshes by 8 members, want the others to adopt", adopted, c.RefreshesOK)
			}
		})
	}
}

// A holder killed with SIGKILL in the middle of its refresh stops renewing its
// lease; after the lease TTL another member takes over and refreshes, and no
// surviving caller fails.
func TestFleetHolderKilled(t *testing.T) {
	for _, fs := range fleetStores {
		t.Run(fs.name, func(t *testing.T) {
			// The first Refresh to reach the server (the lease holder's)
			// hangs there until its client goes away, and then fails
			// without rotating. The holder is killed only once the server
			// holds its request: killed earlier, its request could still be
			// in flight and be answered by a rotation nobody receives, which
			// is the case no lease can fence (see TestFleetHolderPaused).
			arrived := make(chan struct{})
			var first atomic.Bool
			gate := func(ctx context.Context, _ string) error {
				if !first.CompareAndSwap(false, true) {
					return nil
				}
				close(arrived)
				<-ctx.Done()
				return status.FromContextError(ctx.Err()).Err()
			}
			cfg := fleetConfig{
				workers: 4, callers: 4, duration: 2 * fleetTokenTTL, tokenTTL: fleetTokenTTL,
				grant: "refresh", leaseTTL: time.Second, store: fs.store,
				serverOpts: []testserver.Option{testserver.WithRefreshFailureFunc(gate)},
			}
			f := startFleet(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			holder := f.holder(ctx)
			select {
			case <-arrived:
			case <-ctx.Done():
				t.Fatal("the holder's refresh never reached the server")
			}
			if err := holder.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			calls, failed, _ := f.wait(holder)
			takeovers := 0
			for _, w := range f.workers {
				if w != holder {
					takeovers += w.eventCount(tokensource.LeaseTakenOver.String())
				}
			}
			c := f.srv.Counters()
			t.Logf("survivors: %d calls, %d failed; %d takeovers; server: %d refreshes", calls, failed, takeovers, c.RefreshesOK)
			if failed != 0 {
				t.Errorf("%d of %d surviving calls failed, want 0", failed, calls)
			}
			if takeovers != 1 {
				t.Errorf("%d lease takeovers, want 1", takeovers)
			}
			if c.Logins != 0 || c.RefreshesOK < 1 {
				t.Errorf("server: %d logins, %d refreshes; want the fleet to go on refreshing without a login", c.Logins, c.RefreshesOK)
			}
		})
	}
}

// A holder stopped with SIGSTOP past its lease loses it; a peer takes over and
// commits; when the holder resumes, its commit is refused (it adopts the
// peer's token) and nothing is overwritten. The grant is a slow fresh login
// per refresh (as client credentials), because with a rotating refresh token a
// pause after the server rotated is the one case no lease can fence (see the
// README).
func TestFleetHolderPaused(t *testing.T) {
	for _, fs := range fleetStores {
		t.Run(fs.name, func(t *testing.T) {
			cfg := fleetConfig{
				workers: 3, callers: 2, duration: 3 * fleetTokenTTL, tokenTTL: fleetTokenTTL,
				grant: "slowlogin", leaseTTL: time.Second, refreshTimeout: 20 * time.Second, store: fs.store,
			}
			f := startFleet(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			holder := f.holder(ctx)
			if err := holder.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			// A peer takes the expired lease and commits its own token.
			peer, err := f.firstEvent(ctx, tokensource.RefreshSucceeded.String(), holder)
			if err != nil {
				t.Fatal(err)
			}
			if peer.eventCount(tokensource.LeaseTakenOver.String()) != 1 {
				t.Errorf("the peer that refreshed did not report taking over the lease")
			}
			before, err := f.store.Load(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := holder.cmd.Process.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			// Resumed, the holder finishes its grant; its commit is refused
			// and it adopts the peer's token instead.
			if err := holder.waitEvent(ctx, tokensource.TokenAdopted.String(), 1); err != nil {
				t.Fatal(err)
			}
			if n := holder.eventCount(tokensource.RefreshSucceeded.String()); n != 0 {
				t.Errorf("the resumed holder reported %d refreshes of its own, want its commit refused", n)
			}
			after, err := f.store.Load(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if after.AccessToken != before.AccessToken {
				t.Errorf("the shared token changed when the stale holder resumed")
			}
			calls, failed, _ := f.wait()
			t.Logf("%d calls, %d failed", calls, failed)
			if failed != 0 {
				t.Errorf("%d of %d calls failed, want 0", failed, calls)
			}
		})
	}
}

// firstEvent returns the first worker other than except to report kind.
func (f *fleet) firstEvent(ctx context.Context, kind string, except *worker) (*worker, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	first := make(chan *worker, len(f.workers))
	for _, w := range f.workers {
		if w == except {
			continue
		}
		go func() {
			if w.waitEvent(ctx, kind, 1) == nil {
				first <- w
			}
		}()
	}
	select {
	case w := <-first:
		return w, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func fileFleetStore(t testing.TB) (string, tokensource.Store) {
	path := filepath.Join(t.TempDir(), "token.json")
	return "file:" + path, tokensource.NewFileStore(path)
}

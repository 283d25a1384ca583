package redisstore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// TryLease takes the fleet's refresh lease if no live member holds it, and
// returns (nil, nil) at once if one does. The lease is a key holding a random
// owner with a PX expiry of the lease TTL, set in the same atomic script that
// reads the record, so Lease.Record is exactly what the fence compares
// against. The Store renews the lease every TTL/3 until Commit or Release.
// Errors match tokensource.ErrCoordinatorUnavailable when Redis could not be
// reached, and ErrCorruptRecord or ErrSealMismatch when the record cannot be
// read (the lease is then released again). When ctx ends or the reply times
// out, the script may have run all the same: TryLease then releases the lease
// it may have been granted, waiting at most min(2 s, the lease TTL) for that.
func (s *Store) TryLease(ctx context.Context) (tokensource.Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	owner := rand.Text() // 128 random bits: owners never collide
	ttl := strconv.FormatInt(s.opts.ttl.Milliseconds(), 10)
	sent := time.Now() // the lease's lifetime counts from no later than this
	res, err := acquireScript.Run(ctx, s.client, []string{s.recordKey, s.leaseKey}, owner, ttl).Slice()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	l := &lease{s: s, owner: owner}
	if err != nil {
		var nerr net.Error
		if ctx.Err() != nil || (errors.As(err, &nerr) && nerr.Timeout()) {
			// The script may have run with its reply cut off by the
			// deadline: give the lease back rather than leave the fleet
			// waiting out a TTL for a lease nobody renews.
			l.end(ctx)
		}
		return nil, s.fail(ctx, "taking the lease", err)
	}
	if len(res) != 4 {
		l.end(ctx)
		return nil, s.recordErr(ErrCorruptRecord, "unexpected reply to the lease script")
	}
	taken, _ := res[0].(int64)
	version, _ := res[1].(string)
	payload, _ := res[2].(string)
	restored, _ := res[3].(string)
	rec, err := s.record(version, payload, restored)
	if err != nil {
		l.end(ctx)
		return nil, err
	}
	l.rec, l.takenOver = rec, taken == 1
	l.expires.Store(sent.Add(s.opts.ttl).UnixNano())
	l.startRenewal()
	return l, nil
}

// lease is a granted refresh lease. Its methods are safe for concurrent use
// (the Lease interface does not require it, but a Source may release a lease
// at its refresh timeout while another goroutine commits a late result).
type lease struct {
	s         *Store
	owner     string
	rec       tokensource.Record
	takenOver bool

	stopOnce sync.Once
	cancel   context.CancelFunc // stops the renewal
	done     chan struct{}      // closed when the renewal has stopped

	mu       sync.Mutex
	released bool // a Release reached Redis

	expires atomic.Int64 // see Expires, in Unix nanoseconds
}

// Expires is tokensource.ExpiringLease's: the TTL counted from just before
// the acquisition or the last renewal that Redis confirmed; zero once a
// renewal found the lease gone.
func (l *lease) Expires() time.Time { return time.Unix(0, l.expires.Load()) }

// Record returns the record read when the lease was taken.
func (l *lease) Record() tokensource.Record { return l.rec }

// TakenOver reports whether the lease was taken from a holder whose lease had
// expired: the record still named a holder that had neither committed nor
// released when its lease key was gone.
func (l *lease) TakenOver() bool { return l.takenOver }

// Commit writes t as the shared token if the record still holds the version
// read with the lease and no other member holds the lease (ours may have
// expired or been released, and a late result is still written then). It
// writes exactly version Record().Version+1, deletes the lease, and notifies
// waiters. With WithReplicaAck it returns, and notifies, only once replicas
// acknowledged the write; otherwise it fails with an error matching
// ErrNotReplicated and tokensource.ErrCoordinatorUnavailable, and the
// written token is not announced (Restore offers it again). A refused write
// returns an error matching tokensource.ErrLeaseLost and writes nothing. The
// lease ends with Commit whatever its outcome: a refused commit deletes it if
// it is still ours, and after a failure to reach Redis it is no longer
// renewed and expires after its TTL.
func (l *lease) Commit(ctx context.Context, t *tokensource.Token) error {
	defer l.stopRenewal()
	if err := ctx.Err(); err != nil {
		return err
	}
	if t == nil {
		return errNilToken
	}
	data, err := l.s.encode(t)
	if err != nil {
		return err
	}
	s := l.s
	const op = "committing the token"
	w, err := s.writer(ctx)
	if err != nil {
		return s.fail(ctx, op, err)
	}
	defer w.close()
	res, err := commitScript.Run(ctx, w.conn, []string{s.recordKey, s.leaseKey},
		l.owner, strconv.FormatUint(l.rec.Version, 10), data, s.channel, strconv.FormatUint(l.rec.Version+1, 10),
		w.publishInScript()).Slice()
	if err != nil {
		return s.fail(ctx, op, err)
	}
	if len(res) == 2 {
		if ok, _ := res[0].(int64); ok == 1 {
			return w.acknowledge(ctx, op, strconv.FormatUint(l.rec.Version+1, 10))
		}
		switch reason, _ := res[1].(string); reason {
		case "held":
			return fmt.Errorf("redisstore: commit refused: %w (another member holds the lease)", tokensource.ErrLeaseLost)
		case "version":
			return fmt.Errorf("redisstore: commit refused: %w (the record changed since the lease was taken)", tokensource.ErrLeaseLost)
		}
	}
	return s.recordErr(ErrCorruptRecord, "unexpected reply to the commit script")
}

// Release gives up the lease without writing, if it is still ours, and wakes
// waiters. It is idempotent and never deletes a lease another member took
// after ours expired.
func (l *lease) Release(ctx context.Context) error {
	l.stopRenewal()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s := l.s
	err := releaseScript.Run(ctx, s.client, []string{s.recordKey, s.leaseKey}, l.owner, s.channel).Err()
	if err != nil {
		return s.fail(ctx, "releasing the lease", err)
	}
	l.released = true
	return nil
}

// endTimeout bounds the best-effort release of a lease TryLease could not
// hand out; the lease expires after its TTL anyway.
const endTimeout = 2 * time.Second

// end releases, best effort, a lease that TryLease could not hand out.
func (l *lease) end(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(endTimeout, l.s.opts.ttl))
	defer cancel()
	_ = releaseScript.Run(ctx, l.s.client, []string{l.s.recordKey, l.s.leaseKey}, l.owner, l.s.channel).Err()
}

// startRenewal extends the lease every TTL/3 until stopRenewal. A renewal
// that fails to reach Redis is retried at the next tick (the lease survives
// two lost renewals); one that finds the lease gone stops, since the lease
// cannot come back.
func (l *lease) startRenewal() {
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel, l.done = cancel, make(chan struct{})
	s := l.s
	every := s.opts.ttl / 3
	ttl := strconv.FormatInt(s.opts.ttl.Milliseconds(), 10)
	go func() {
		defer close(l.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			rctx, rcancel := context.WithTimeout(ctx, every)
			sent := time.Now()
			n, err := renewScript.Run(rctx, s.client, []string{s.recordKey, s.leaseKey}, l.owner, ttl).Int64()
			rcancel()
			switch {
			case ctx.Err() != nil:
				return
			case err == nil && n == 1:
				l.expires.Store(sent.Add(s.opts.ttl).UnixNano())
			case err != nil:
				s.opts.logger.Warn("redisstore: renewing the refresh lease failed; retrying", "key", s.recordKey, "error", s.fail(rctx, "renewing the lease", err))
			case n == 0:
				l.expires.Store(0)
				s.opts.logger.Warn("redisstore: the refresh lease expired before it could be renewed; its commit will be refused if another member took over", "key", s.recordKey)
				return
			}
		}
	}()
}

// stopRenewal stops the renewal and waits for its goroutine.
func (l *lease) stopRenewal() {
	l.stopOnce.Do(func() {
		if l.cancel != nil {
			l.cancel()
			<-l.done
		}
	})
}

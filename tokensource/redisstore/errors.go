package redisstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// ErrCorruptRecord is matched (errors.Is) by the error of a read when the
// record in Redis is not a token in this package's format (another program
// wrote the key, say). Such errors also match tokensource.ErrCorruptStore, so
// a Source treats them like a corrupt file: it fails the refresh and never
// overwrites the record on its own. The error never contains the record.
var ErrCorruptRecord = errors.New("redisstore: the record is not a token in the expected format")

// ErrSealMismatch is matched (errors.Is) by the error of a read when the
// record's sealing does not match the Store's WithSealKey: it was sealed with
// another key (or under another key name, or tampered with), it is sealed and
// the Store has no seal key, or it is plain and the Store has one. Such
// errors also match tokensource.ErrCorruptStore. The error never contains the
// record.
var ErrSealMismatch = errors.New("redisstore: the record's sealing does not match the seal key")

// ErrNotReplicated is matched (errors.Is) by the error of a write (Commit,
// Save, Restore) of a Store with WithReplicaAck when fewer replicas than it
// waits for acknowledged the write in time. The write is on the master, but
// a failover could still lose it, and waiters were not notified. Such errors
// also match tokensource.ErrCoordinatorUnavailable, so a Source keeps the
// commit pending and offers it again (Restore) until it is acknowledged.
var ErrNotReplicated = errors.New("redisstore: the write was not acknowledged by enough replicas")

// recordError is a decoding failure: kind (ErrCorruptRecord or
// ErrSealMismatch) and tokensource.ErrCorruptStore, with a detail that never
// quotes the record.
type recordError struct {
	kind   error
	key    string
	detail string
}

func (e *recordError) Error() string {
	return e.kind.Error() + ": key " + e.key + ": " + e.detail
}

func (e *recordError) Unwrap() []error { return []error{e.kind, tokensource.ErrCorruptStore} }

// errNilToken is returned by Save and Commit for a nil token.
var errNilToken = errors.New("redisstore: cannot store a nil token")

// wrap describes the failure of operation op against Redis. Failures to
// reach Redis, and replies saying that it cannot serve now, match
// tokensource.ErrCoordinatorUnavailable; other server replies (a wrong
// password, an ACL denial, WRONGTYPE) are configuration errors and do not, so
// that WithUncoordinatedRefresh never hides them. When ctx ended before Redis
// answered, the error also matches ctx.Err(). Neither go-redis nor Redis put command
// arguments in errors, so a token cannot leak through err.
func wrap(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if !unavailable(err) {
		return fmt.Errorf("redisstore: %s: %w", op, err)
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		// go-redis turns a ctx deadline into a socket deadline, so the
		// cause is an i/o timeout; say that the caller's ctx ended too.
		return fmt.Errorf("redisstore: %s: %w: %w: %w", op, tokensource.ErrCoordinatorUnavailable, cerr, err)
	}
	return fmt.Errorf("redisstore: %s: %w: %w", op, tokensource.ErrCoordinatorUnavailable, err)
}

// fail is wrap for the Store's operations. A Cluster client follows MOVED
// by itself, but keeps dialling a master that died until its periodic
// reload of the slots (every 10 s): a failure to reach Redis makes it reload
// now, so that the next attempt finds the promoted replica within about a
// second of the failover. A Store that writes through a connection of its
// own (WithReplicaAck) sees MOVED itself: the slot moved, a passing failure
// too.
func (s *Store) fail(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	cc, ok := s.client.(*redis.ClusterClient)
	if !ok {
		return wrap(ctx, op, err)
	}
	moved := redis.HasErrorPrefix(err, "MOVED") || redis.HasErrorPrefix(err, "ASK")
	if moved || unavailable(err) {
		cc.ReloadState(ctx)
	}
	if moved {
		return fmt.Errorf("redisstore: %s: %w: the record's slot moved: %w", op, tokensource.ErrCoordinatorUnavailable, err)
	}
	return wrap(ctx, op, err)
}

// unavailable reports whether err means Redis could not serve the command:
// anything but a server reply (dial errors, timeouts, a connection closed,
// redis.ErrClosed, pool timeouts) and the replies of a server that is
// starting, failing over or overloaded.
func unavailable(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return true
	}
	for _, p := range []string{"LOADING", "BUSY", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS", "max number of clients reached"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

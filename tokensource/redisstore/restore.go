package redisstore

import (
	"context"
	"errors"
	"math"
	"strconv"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

var _ tokensource.Restorer = (*Store)(nil)

// Restore writes rec.Token at version rec.Version, marked Restored until the
// next Save or Commit, if the record's version is lower (a missing record,
// as after a Redis restart without persistence, or a record rolled back by a
// failover, has a lower one), and reports whether it wrote. It is a maximum: of two restores the higher version stays, in
// either order, and an equal or higher version is left alone. It neither
// takes, needs nor clears the lease; a holder that read an older record is
// refused at Commit, since the version no longer matches. The next Save or
// Commit writes rec.Version+1. It wakes waiters when it writes, and it
// seals and encodes the token as Save does.
//
// With WithReplicaAck it waits for the replicas after writing, and also when
// it did not write, so that a commit that was not acknowledged and is
// offered again is acknowledged now; it wakes waiters once acknowledged,
// whether it wrote or not. An error matching ErrNotReplicated (and
// tokensource.ErrCoordinatorUnavailable) means the record, whichever
// version it holds, is not known to be on the replicas yet: call it again. Other errors
// are those of Save; a version field that is not a number yields one
// matching ErrCorruptRecord and writes nothing. rec.Version must be at most
// math.MaxInt64 (Redis counts versions in signed 64-bit integers); a
// Restore at version 0 never writes.
func (s *Store) Restore(ctx context.Context, rec tokensource.Record) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if rec.Token == nil {
		return false, errNilToken
	}
	if rec.Version > math.MaxInt64 {
		return false, errVersionRange
	}
	if rec.Version == 0 {
		return false, nil
	}
	data, err := s.encode(rec.Token)
	if err != nil {
		return false, err
	}
	const op = "restoring the token"
	w, err := s.writer(ctx)
	if err != nil {
		return false, s.fail(ctx, op, err)
	}
	defer w.close()
	version := strconv.FormatUint(rec.Version, 10)
	n, err := restoreScript.Run(ctx, w.conn, []string{s.recordKey}, version, data, s.channel, w.publishInScript()).Int64()
	if err != nil {
		return false, s.fail(ctx, op, err)
	}
	if n < 0 {
		return false, s.recordErr(ErrCorruptRecord, "the version field is not an unsigned integer")
	}
	// Announced even when it did not write: the record it found may be a
	// commit that was written but never announced for want of replicas.
	return n == 1, w.acknowledge(ctx, op, version)
}

// errVersionRange is returned by Restore for a version Redis cannot count.
var errVersionRange = errors.New("redisstore: Restore: the version exceeds what Redis counts (math.MaxInt64)")

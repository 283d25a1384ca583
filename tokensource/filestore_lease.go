package tokensource

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/faultpoint"
)

// leaseRecord is the contents of a FileStore's lock file.
type leaseRecord struct {
	// Owner is the random id of the lease's holder; empty when it is free.
	Owner string `json:"owner,omitempty"`
	// Expires is when the lease ends unless renewed, in Unix nanoseconds
	// of the wall clock.
	Expires int64 `json:"expires,omitempty"`
	// Revision is the highest revision written to the token file.
	Revision uint64 `json:"revision,omitempty"`
	// Slot is the heartbeat file's slot of the current lease (0 or 1):
	// every lease granted takes the other one than the lease before it.
	Slot int `json:"slot,omitempty"`
}

// leaseRecordSize is the fixed size of the lock file's contents: JSON padded
// with spaces. Every write replaces all of it with one write at offset 0, so
// the file never needs truncating and a reader without the lock sees a
// whole record far more often than not (and otherwise a record it cannot
// parse, which Wait treats as a reason to look again).
const leaseRecordSize = 128

// parseLeaseRecord parses the lock file's contents. Empty or unparseable
// contents (there is no writer that leaves them so, short of a crash of
// the host) count as a free lease.
func parseLeaseRecord(data []byte) (leaseRecord, bool) {
	var lr leaseRecord
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return lr, true
	}
	if err := json.Unmarshal(data, &lr); err != nil {
		return leaseRecord{}, false
	}
	return lr, true
}

// readLeaseRecord reads the lease record of the locked lock file lf.
func readLeaseRecord(lf *os.File) (leaseRecord, error) {
	buf := make([]byte, 4*leaseRecordSize)
	n, err := lf.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return leaseRecord{}, fmt.Errorf("%w: reading the lock file: %w", ErrCoordinatorUnavailable, err)
	}
	lr, _ := parseLeaseRecord(buf[:n])
	return lr, nil
}

// writeLeaseRecord replaces the contents of the locked lock file lf by lr.
func writeLeaseRecord(lf *os.File, lr leaseRecord) error {
	data, err := json.Marshal(lr)
	if err != nil || len(data) >= leaseRecordSize {
		return fmt.Errorf("%w: encoding the lease record", ErrCoordinatorUnavailable)
	}
	buf := bytes.Repeat([]byte{' '}, leaseRecordSize)
	copy(buf, data)
	buf[leaseRecordSize-1] = '\n'
	if _, err := lf.WriteAt(buf, 0); err != nil {
		return fmt.Errorf("%w: writing the lock file: %w", ErrCoordinatorUnavailable, err)
	}
	if fi, err := lf.Stat(); err == nil && fi.Size() > leaseRecordSize {
		_ = lf.Truncate(leaseRecordSize)
	}
	return nil
}

// locked runs fn while holding the exclusive lock on the lock file, which
// it opens (creating it) for this critical section alone: a flock belongs
// to the open file description, so a fresh one per section is what makes
// two FileStores, or two goroutines of one, exclude each other. It waits for
// the lock within ctx, trying without blocking and sleeping in between
// (from 100 µs up to 5 ms), because a blocking flock cannot be cancelled.
func (f *FileStore) locked(ctx context.Context, fn func(lf *os.File) error) error {
	lf, err := os.OpenFile(f.lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		// A lock file that cannot be opened because of the configuration
		// is not an outage: retrying, or refreshing without the lock,
		// would not help.
		if uerr := f.unusable(err); uerr != nil {
			return uerr
		}
		return fmt.Errorf("%w: opening the lock file: %w", ErrCoordinatorUnavailable, err)
	}
	defer lf.Close()
	for delay := 100 * time.Microsecond; ; delay = min(2*delay, 5*time.Millisecond) {
		ok, err := tryLockFile(lf)
		if err != nil {
			return fmt.Errorf("%w: locking %s: %w", ErrCoordinatorUnavailable, f.lockPath, err)
		}
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the lock on %s: %w", f.lockPath, ctx.Err())
		case <-time.After(delay):
		}
	}
	defer unlockFile(lf)
	if f.inLock != nil {
		f.inLock()
	}
	faultpoint.FileStoreLocked(f.lockPath)
	return fn(lf)
}

// TryLease is Coordinator.TryLease among the FileStores of the host: it
// returns the lease with the record read under the lock, or (nil, nil) at
// once if a live member, in this process or another, holds it. A lease is
// live until its holder has renewed it neither in the lock file nor in the
// heartbeat file for the TTL (see FileStore).
//
// Commit or Release must be called on the lease. Its Commit writes at
// revision Record().Version+1, exactly, so that the holder knows the
// revision of the token it committed. (A Save writes above every revision
// written before instead, which skips some after the token file went back.)
//
// Errors of the lock file match ErrCoordinatorUnavailable, except that a
// path that cannot work as configured (see NewFileStore) fails with
// ErrStoreUnusable; a corrupt token file fails with ErrCorruptStore and
// leaves the lease alone.
func (f *FileStore) TryLease(ctx context.Context) (Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var l *fileLease
	err := f.locked(ctx, func(lf *os.File) error {
		// The clock first: see live.
		now := f.now()
		lr, err := readLeaseRecord(lf)
		if err != nil {
			return err
		}
		if f.live(lr, now) {
			return nil
		}
		rec, err := f.readRecord()
		if err != nil {
			return err
		}
		takenOver := lr.Owner != ""
		// The expiry counts from now, not from the judgement: this
		// member may have stalled in between.
		lr.Owner, lr.Expires, lr.Slot = rand.Text(), f.now().Add(f.ttl).UnixNano(), 1-lr.Slot
		if err := writeLeaseRecord(lf, lr); err != nil {
			return err
		}
		l = &fileLease{f: f, owner: lr.Owner, slot: lr.Slot, rec: rec, takenOver: takenOver}
		l.expires.Store(time.Now().Add(f.ttl).UnixNano())
		return nil
	})
	if err != nil || l == nil {
		return nil, storeError("taking the refresh lease", err, ErrCorruptStore)
	}
	l.startRenewing()
	return l, nil
}

// Wait blocks until the token file's revision differs from version, the
// lease is free or has expired, or ctx ends (returning ctx.Err()). It polls
// every poll interval (see FileStore) and may return early, for instance
// when it reads the lock file in the middle of a write.
func (f *FileStore) Wait(ctx context.Context, version uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ticker := time.NewTicker(f.poll)
	defer ticker.Stop()
	for !f.changed(version) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
	return nil
}

// changed reports whether Wait should return: the revision is no longer
// version, or the lease is not live. Anything it cannot read is a reason to
// return, so that the caller's LoadRecord or TryLease reports it.
//
// It reads the token file on every poll rather than only when a stat shows
// it replaced: a replacement can reuse the inode number of the file it
// replaced a moment before, with the same size and, at the kernel's timer
// granularity, the same mtime. The file is small, and only the Sources
// waiting for a peer's refresh poll it.
func (f *FileStore) changed(version uint64) bool {
	now := f.now() // before the lease: see live
	if rec, err := f.readRecord(); err != nil || rec.Version != version {
		return true
	}
	data, err := os.ReadFile(f.lockPath)
	if err != nil {
		return true // no lock file: nobody has taken the lease
	}
	lr, ok := parseLeaseRecord(data)
	return !ok || !f.live(lr, now)
}

// fileLease is a lease of a FileStore.
type fileLease struct {
	f         *FileStore
	owner     string
	slot      int // in the heartbeat file
	rec       Record
	takenOver bool

	mu       sync.Mutex   // serializes Commit and Release
	released bool         // the lock file no longer names this lease; guarded by mu
	expires  atomic.Int64 // see Expires, in Unix nanoseconds

	// stopRenewing stops the renewing goroutine and waits for it to end;
	// it may be called more than once.
	stopRenewing func()
}

func (l *fileLease) Record() Record {
	return Record{Token: l.rec.Token.clone(), Version: l.rec.Version, Restored: l.rec.Restored}
}

func (l *fileLease) TakenOver() bool { return l.takenOver }

// startRenewing starts the goroutine that renews the lease every TTL/3,
// first in the heartbeat file, which needs no lock, then in the lock file.
// It ends when stopRenewing is called or when it finds the lease taken over
// by another member (this one was paused past the TTL, say). Commit and
// Release stop it only once they hold the lock, so that a member stalled
// inside a critical section meanwhile still sees the lease renewed.
func (l *fileLease) startRenewing() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	l.stopRenewing = sync.OnceFunc(func() { cancel(); <-done })
	every := max(l.f.ttl/3, time.Millisecond)
	go func() {
		defer close(done)
		ticker := time.NewTicker(every)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
			if !l.heartbeat() {
				return
			}
			// A renewal that cannot get the lock in time is retried at
			// the next tick; the heartbeats go on meanwhile.
			rctx, rcancel := context.WithTimeout(ctx, every)
			held, err := l.renew(rctx)
			rcancel()
			if err == nil && !held {
				return
			}
		}
	}()
}

// heartbeat extends the lease by the TTL in the heartbeat file, without the
// lock, unless the lock file names another holder: then it reports false.
// The lock file is read without the lock too, and one read in the middle of
// a write is no reason to stop.
func (l *fileLease) heartbeat() (held bool) {
	f := l.f
	if data, err := os.ReadFile(f.lockPath); err == nil {
		if lr, ok := parseLeaseRecord(data); ok && lr.Owner != l.owner {
			return false
		}
	}
	// A failed write leaves the renewal in the lock file.
	sent := time.Now()
	if f.writeHeartbeat(l.slot, l.owner, f.now().Add(f.ttl)) == nil {
		l.expires.Store(sent.Add(f.ttl).UnixNano())
	}
	return true
}

// Expires is ExpiringLease's: the TTL counted from just before the
// acquisition or the last renewal written, in the heartbeat file or the
// lock file.
func (l *fileLease) Expires() time.Time { return time.Unix(0, l.expires.Load()) }

// renew extends the lease by the TTL in the lock file if this lease still
// holds it, even after it expired while nobody took it over.
func (l *fileLease) renew(ctx context.Context) (held bool, err error) {
	f := l.f
	err = f.locked(ctx, func(lf *os.File) error {
		lr, err := readLeaseRecord(lf)
		if err != nil || lr.Owner != l.owner {
			return err
		}
		held = true
		sent := time.Now()
		lr.Expires = f.now().Add(f.ttl).UnixNano()
		if err := writeLeaseRecord(lf, lr); err != nil {
			return err
		}
		l.expires.Store(sent.Add(f.ttl).UnixNano())
		return nil
	})
	return held, err
}

// Commit is Lease.Commit. It writes t at revision Record().Version+1,
// exactly: the token file held Record().Version, and a Source relies on
// knowing the revision of the token it committed. (A Save writes above the
// lock file's highest revision instead; a Commit need not, since the token
// file is still at the revision its lease read.)
//
// The lease stays renewed while Commit waits for the lock, so that a member
// stalled inside a critical section meanwhile cannot take it over. Commit
// gives the lease up on failure too: it frees it in the lock file when it
// gets the lock, and otherwise stops renewing it, so that it expires after
// the TTL. A corrupt token file matches ErrCorruptStore and is not
// replaced.
func (l *fileLease) Commit(ctx context.Context, t *Token) error {
	defer l.stopRenewing()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if t == nil {
		_ = l.releaseLocked(ctx)
		return errNilToken
	}
	f := l.f
	err := f.locked(ctx, func(lf *os.File) error {
		l.stopRenewing() // holding the lock, nobody can take the lease over
		now := f.now()   // before the lease: see live
		lr, err := readLeaseRecord(lf)
		if err != nil {
			return err
		}
		mine := lr.Owner == l.owner
		if mine {
			lr.Owner, lr.Expires = "", 0
		} else {
			l.released = true // the lock file does not name this lease
		}
		// giveUp frees the lease when this Commit writes nothing.
		giveUp := func() {
			if mine && writeLeaseRecord(lf, lr) == nil {
				l.released = true
			}
		}
		rec, err := f.readRecord()
		if err != nil {
			giveUp()
			return err
		}
		if rec.Version != l.rec.Version {
			giveUp()
			return fmt.Errorf("%w: the token file is at revision %d, the lease read %d",
				ErrLeaseLost, rec.Version, l.rec.Version)
		}
		if f.live(lr, now) { // another member's lease (this one's was cleared above)
			return fmt.Errorf("%w: another member holds the lease", ErrLeaseLost)
		}
		// writeLocked writes the token file before it frees the lease, so
		// that waiters see the new revision no later than the free lease.
		if err := f.writeLocked(lf, lr, Record{Token: t, Version: l.rec.Version + 1}); err != nil {
			giveUp()
			return err
		}
		l.released = true
		return nil
	})
	return storeError("committing token", err, ErrLeaseLost)
}

// Release gives up the lease without writing, unless another member has
// taken it over since (then it leaves that member's lease alone). It is
// idempotent. Like Commit, it renews the lease while it waits for the lock;
// if it cannot get the lock within ctx, the lease is no longer renewed and
// expires after the TTL.
func (l *fileLease) Release(ctx context.Context) error {
	defer l.stopRenewing()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.releaseLocked(ctx)
}

func (l *fileLease) releaseLocked(ctx context.Context) error {
	if l.released {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err := l.f.locked(ctx, func(lf *os.File) error {
		l.stopRenewing()
		lr, err := readLeaseRecord(lf)
		if err != nil || lr.Owner != l.owner {
			return err
		}
		lr.Owner, lr.Expires = "", 0
		return writeLeaseRecord(lf, lr)
	})
	if err != nil {
		return storeError("releasing the refresh lease", err)
	}
	l.released = true
	return nil
}

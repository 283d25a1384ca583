package tokensource

import (
	"context"
	"os"
)

// Restore is Restorer.Restore among the FileStores of the host: under the
// lock, it writes rec.Token at revision rec.Version, marked Restored until
// the next Save or Commit, if the token file's revision is lower (a missing
// file has revision 0), whoever holds the lease, which it leaves alone; it
// reports whether it wrote. A lease holder
// that read a lower revision can no longer commit, waiters see the new
// revision at their next poll, and the next Commit writes rec.Version+1.
//
// The token file can go back below the highest revision ever written (it was
// deleted, or replaced by an older copy): LoadRecord reports the revision
// the file holds, so that members see it went back, and Restore compares
// with that revision too. The lock file keeps the highest revision written,
// which Restore raises to rec.Version, so that a later Save still writes
// above every revision a lease may have read.
//
// A nil rec.Token fails; a corrupt token file fails with ErrCorruptStore and
// is left for inspection (a Save replaces it). Lock errors are those of
// TryLease.
func (f *FileStore) Restore(ctx context.Context, rec Record) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if rec.Token == nil {
		return false, errNilToken
	}
	wrote := false
	err := f.locked(ctx, func(lf *os.File) error {
		lr, err := readLeaseRecord(lf)
		if err != nil {
			return err
		}
		cur, err := f.readRecord()
		if err != nil || cur.Version >= rec.Version {
			return err
		}
		if err := f.writeLocked(lf, lr, Record{Token: rec.Token, Version: rec.Version, Restored: true}); err != nil {
			return err
		}
		wrote = true
		return nil
	})
	return wrote, storeError("restoring token", err, ErrCorruptStore)
}

var _ Restorer = (*FileStore)(nil)

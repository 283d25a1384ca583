package tokensource

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"time"
)

// ErrCorruptStore is matched (errors.Is) by the error FileStore.Load returns
// when the file exists but does not hold a token in the expected format. The
// file is left untouched for inspection; the error names the file and the
// problem but never its contents.
var ErrCorruptStore = errors.New("tokensource: token store is corrupt")

// fileFormatVersion is written to every file. Version 2 added the revision;
// Load reads versions 1 and 2 and refuses others rather than guess. The
// restored flag is optional within version 2: a file without it was not
// written by Restore.
const fileFormatVersion = 2

type fileToken struct {
	Version int `json:"version"`
	// Revision is the record's version (Record.Version): at least 1 in a
	// version-2 file, absent from a version-1 file (which counts as 1).
	Revision     uint64    `json:"revision,omitempty"`
	AccessToken  string    `json:"access_token"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	Expiry       time.Time `json:"expiry,omitzero"`
	// Restored is Record.Restored: written only by Restore, and absent
	// (false) from every file Save and Commit write.
	Restored bool `json:"restored,omitempty"`
}

// Defaults of the FileStore options.
const (
	defaultFileLeaseTTL     = 10 * time.Second
	defaultFilePollInterval = 10 * time.Millisecond
)

// FileStore is a Store that keeps the token in a JSON file, readable only by
// its owner (mode 0600). Save replaces the file atomically (a temporary file
// in the same directory, fsync, rename, fsync of the directory), so a crash
// at any point leaves either the old or the new token, never a mix, and
// readers never need a lock. A token file of an earlier release (format
// version 1, without a revision) is read as revision 1.
//
// FileStore is a Coordinator for every Source that uses a FileStore on the
// same path, in one process or in several processes on one host: they make
// one Refresher call per expiry between them and adopt each other's results
// (see Coordinator). It is a Restorer too. It coordinates through two more
// files beside the token file, path+".lock" and path+".heartbeat", which it
// creates with mode 0600 and never removes:
//
//   - An exclusive lock on the lock file (flock on Unix, LockFileEx on
//     Windows; two FileStores of one process exclude each other as two
//     processes do) guards short critical sections only: taking, renewing
//     and giving up the refresh lease, and the read-compare-write of Save,
//     Restore and Lease.Commit, never a Refresher call. A process that dies
//     inside a critical section blocks nobody; one stopped (SIGSTOP, or
//     starved of CPU) inside one delays the others' critical sections,
//     within their ctx, until it continues.
//   - The lock file holds the lease: a random owner and an expiry. The
//     holder renews it every third of the TTL while it refreshes (see
//     WithFileLeaseTTL), under the lock in the lock file and, without the
//     lock, in the heartbeat file; it goes on renewing while its Commit or
//     Release waits for the lock. A holder that dies, hangs or is paused is
//     taken over once it has renewed in neither file for the TTL. Expiry is
//     judged by the wall clock, which all processes of a host share, read
//     before the lease: a member stalled inside a critical section for
//     longer than the TTL (stopped, starved, in a long garbage collection)
//     sees, when it continues, the renewals the holder made meanwhile, and
//     cannot take a live holder's lease over.
//   - The token file carries a revision (Record.Version), raised by every
//     Save and Commit. A Commit writes only over the revision its lease
//     read, and only if no other live member holds the lease, so a holder
//     that lost its lease cannot overwrite a newer token. The lock file
//     keeps the highest revision written, above which a Save writes.
//
// Some pauses no lock can fence. A holder itself paused past the TTL after
// the authorization server rotated its refresh token and before its Commit
// stops renewing and is taken over, and its Commit is refused: its token can
// reach the record only through Restore, and the member that took over
// presents the refresh token the server has consumed unless that happens
// within the repair grace it waits first (see WithRepairInterval). A wall
// clock stepped forward by more than the TTL, or a host suspended for
// longer, ends every lease at once, a live holder's too; a clock step never
// unfences a commit.
//
// Waiters (Wait) poll the files every poll interval (WithFilePollInterval),
// and only while a peer refreshes. On platforms with neither flock nor
// LockFileEx (AIX, Solaris, Plan 9, js, WASI) the lock excludes only the
// FileStores of one process. Keep the file on a local filesystem: on NFS,
// Linux emulates flock with POSIX locks, which do not exclude two FileStores
// of one process. docs/design.md in the repository explains these choices.
//
// All methods are safe for concurrent use.
type FileStore struct {
	path          string
	lockPath      string
	heartbeatPath string
	ttl           time.Duration
	poll          time.Duration

	// rename replaces newpath by oldpath (os.Rename, retried on Windows);
	// tests replace it to simulate a crash before the rename.
	rename func(oldpath, newpath string) error
	// now is the wall clock that judges lease expiry; tests shift it to
	// see a lease expire without waiting.
	now func() time.Time
	// inLock, if set, runs at the start of every critical section, with
	// the lock held: tests stall a member there.
	inLock func()
}

// FileStoreOption configures a FileStore.
type FileStoreOption func(*FileStore)

// WithFileLeaseTTL sets how long a refresh lease lasts without renewal,
// default 10 s: how long a holder that died or hangs (or a process that is
// paused) stalls the other members before one takes over. The holder renews
// it every d/3 while its Refresher runs, so d does not bound the refresh.
// A d that is not positive keeps the default.
func WithFileLeaseTTL(d time.Duration) FileStoreOption {
	return func(f *FileStore) {
		if d > 0 {
			f.ttl = d
		}
	}
}

// WithFilePollInterval sets how often Wait looks at the files while a peer
// holds the lease, default 10 ms: the delay between a peer's commit (or the
// lease's expiry) and the waiters noticing it. A d that is not positive
// keeps the default.
func WithFilePollInterval(d time.Duration) FileStoreOption {
	return func(f *FileStore) {
		if d > 0 {
			f.poll = d
		}
	}
}

// NewFileStore returns a FileStore for the file at path, with the lock file
// path+".lock" and the heartbeat file path+".heartbeat" beside it. The directory must exist and be writable. Nothing
// is read or created until first use: a path that cannot work is reported by
// the first TryLease or Save (for a Source, its first Token or SetToken) with
// an error that matches ErrStoreUnusable and names the directory and the
// cause. Load reads a missing directory as an empty store.
func NewFileStore(path string, opts ...FileStoreOption) *FileStore {
	f := &FileStore{
		path:          path,
		lockPath:      path + ".lock",
		heartbeatPath: path + ".heartbeat",
		ttl:           defaultFileLeaseTTL,
		poll:          defaultFilePollInterval,
		rename:        replaceFile,
		now:           time.Now,
	}
	for _, opt := range opts {
		opt(f)
	}
	return f
}

// Path returns the file's path.
func (f *FileStore) Path() string { return f.path }

// Load reads the token. A missing file is an empty store: (nil, nil). A file
// that cannot be parsed yields an error matching ErrCorruptStore, and the
// file is not modified. Load takes no lock.
func (f *FileStore) Load(ctx context.Context) (*Token, error) {
	rec, err := f.LoadRecord(ctx)
	return rec.Token, err
}

// LoadRecord reads the token with its revision; a missing file is the empty
// record. It fails like Load, and like Load takes no lock: the file is only
// ever replaced whole.
func (f *FileStore) LoadRecord(ctx context.Context) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	return f.readRecord()
}

// readRecord reads and parses the token file.
func (f *FileStore) readRecord() (Record, error) {
	data, err := os.ReadFile(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return Record{}, nil
	}
	if err != nil {
		return Record{}, storeError("reading token file", f.explain(err))
	}
	return parseTokenFile(f.path, data)
}

// parseTokenFile parses the contents of the token file at path. Its errors
// never quote data.
func parseTokenFile(path string, data []byte) (Record, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var ft fileToken
	if err := dec.Decode(&ft); err != nil {
		return Record{}, fmt.Errorf("%w: %s: %s", ErrCorruptStore, path, describeJSONError(err))
	}
	if dec.More() {
		return Record{}, fmt.Errorf("%w: %s: unexpected data after the token", ErrCorruptStore, path)
	}
	rev := ft.Revision
	switch ft.Version {
	case 1:
		if rev != 0 || ft.Restored {
			return Record{}, fmt.Errorf("%w: %s: a format version 1 file has no revision or restored flag", ErrCorruptStore, path)
		}
		rev = 1
	case 2:
		if rev == 0 {
			return Record{}, fmt.Errorf("%w: %s: missing revision", ErrCorruptStore, path)
		}
	default:
		// The number is not quoted: no text of the file goes into the error.
		return Record{}, fmt.Errorf("%w: %s: unsupported format version (want 1 or 2)", ErrCorruptStore, path)
	}
	if ft.AccessToken == "" && ft.RefreshToken == "" {
		return Record{}, fmt.Errorf("%w: %s: neither an access token nor a refresh token", ErrCorruptStore, path)
	}
	return Record{
		Token:    &Token{AccessToken: ft.AccessToken, RefreshToken: ft.RefreshToken, Expiry: ft.Expiry},
		Version:  rev,
		Restored: ft.Restored,
	}, nil
}

// describeJSONError explains a decoding failure without quoting the input:
// encoding/json's messages can contain fragments of the token.
func describeJSONError(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return "invalid JSON at offset " + strconv.FormatInt(syn.Offset, 10)
	case errors.As(err, &typ):
		return "field " + strconv.Quote(typ.Field) + " has the wrong type (want " + typ.Type.String() + ")"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "the file is empty or truncated"
	default:
		return "not a token file (unknown field or malformed value)"
	}
}

// Save writes t atomically with mode 0600, unconditionally (a login is newer
// than anything stored), under the lock: it raises the revision, which
// fences the Commit of any lease taken before, and wakes the waiters. It
// replaces a corrupt file too. If it fails, the previous file is intact and
// no temporary file is left behind (a crash can leave one, named
// ".<name>.tmp-*"; it is ignored by Load and harmless). It blocks only for
// the lock's short critical sections, within ctx.
func (f *FileStore) Save(ctx context.Context, t *Token) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if t == nil {
		return errNilToken
	}
	err := f.locked(ctx, func(lf *os.File) error {
		lr, err := readLeaseRecord(lf)
		if err != nil {
			return err
		}
		rec, _ := f.readRecord() // the empty record if it is corrupt or unreadable
		return f.writeLocked(lf, lr, Record{Token: t, Version: max(rec.Version, lr.Revision) + 1})
	})
	return storeError("saving token", err)
}

// writeLocked writes rec to the token file, then records rec.Version in the
// lock file, whose lease record lr was read under the same lock.
func (f *FileStore) writeLocked(lf *os.File, lr leaseRecord, rec Record) error {
	rev := rec.Version
	if err := f.writeTokenFile(rec); err != nil {
		return err
	}
	// The lock file keeps the highest revision written, so that a Save
	// over a corrupt or deleted token file still moves past every revision
	// a lease may have read. Failing to record it loses nothing that has
	// been written: it is a floor, and the token file holds rev.
	lr.Revision = max(lr.Revision, rev)
	_ = writeLeaseRecord(lf, lr)
	return nil
}

// writeTokenFile replaces the token file with rec: a temporary file in the
// same directory, fsync, rename, fsync of the directory.
func (f *FileStore) writeTokenFile(rec Record) error {
	t := rec.Token
	data, err := json.Marshal(fileToken{
		Version:      fileFormatVersion,
		Revision:     rec.Version,
		AccessToken:  t.AccessToken,
		RefreshToken: t.RefreshToken,
		Expiry:       t.Expiry,
		Restored:     rec.Restored,
	})
	if err != nil {
		return fmt.Errorf("encoding token: %w", err)
	}
	data = append(data, '\n')

	dir, base := filepath.Split(f.path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return f.explain(err)
	}
	tmpName := tmp.Name()
	committed := false
	defer func() {
		if !committed {
			_ = tmp.Close()
			_ = os.Remove(tmpName)
		}
	}()
	// CreateTemp already uses 0600; Chmod makes that independent of it.
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := f.rename(tmpName, f.path); err != nil {
		return f.explain(err)
	}
	committed = true
	// Sync the directory so the rename itself survives a power loss (Windows
	// cannot open a directory for syncing; its rename is durable enough).
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err == nil {
		err = d.Sync()
		_ = d.Close()
	}
	if err != nil {
		return fmt.Errorf("syncing directory: %w", err)
	}
	return nil
}

// unusableError is a FileStore error caused by its configuration: see
// ErrStoreUnusable.
type unusableError struct {
	path, problem string
	err           error
}

func (e *unusableError) Error() string {
	return fmt.Sprintf("tokensource: FileStore %q: %s", e.path, e.problem)
}
func (e *unusableError) Is(target error) bool { return target == ErrStoreUnusable }
func (e *unusableError) Unwrap() error        { return e.err }

// unusable explains err, a failure on the FileStore's files, when its cause
// is the configuration rather than a passing condition: the directory is
// missing or not a directory, the path is a directory, or access is denied.
// It returns nil for other causes. It looks at the path again (after a
// failure only) because the operating system's error rarely says which part
// of it is wrong.
func (f *FileStore) unusable(err error) error {
	dir := filepath.Dir(f.path)
	var problem string
	switch fi, serr := os.Stat(dir); {
	case errors.Is(serr, fs.ErrPermission) || serr == nil && fi.IsDir() && errors.Is(err, fs.ErrPermission):
		problem = fmt.Sprintf("permission denied in directory %q", dir)
	case errors.Is(serr, fs.ErrNotExist) || serr != nil && fileAncestor(dir):
		problem = fmt.Sprintf("directory %q does not exist", dir)
	case serr == nil && !fi.IsDir():
		problem = fmt.Sprintf("%q is not a directory", dir)
	case serr == nil:
		if pi, perr := os.Stat(f.path); perr == nil && pi.IsDir() {
			problem = "the path is a directory, not a file"
		}
	}
	if problem == "" {
		return nil
	}
	return &unusableError{path: f.path, problem: problem, err: err}
}

// explain is f.unusable(err) if err is caused by the configuration, and err
// itself otherwise.
func (f *FileStore) explain(err error) error {
	if uerr := f.unusable(err); uerr != nil {
		return uerr
	}
	return err
}

// storeError prefixes err, the failure of the FileStore operation what, with
// the package's name, unless err says what is wrong on its own: it matches
// ErrStoreUnusable or one of own. A nil err stays nil.
func storeError(what string, err error, own ...error) error {
	if err == nil || errors.Is(err, ErrStoreUnusable) ||
		slices.ContainsFunc(own, func(e error) bool { return errors.Is(err, e) }) {
		return err
	}
	return fmt.Errorf("tokensource: %s: %w", what, err)
}

// fileAncestor reports whether a part of dir's path is a file (Unix then
// reports ENOTDIR rather than "not found").
func fileAncestor(dir string) bool {
	for p := dir; filepath.Dir(p) != p; p = filepath.Dir(p) {
		if fi, err := os.Stat(p); err == nil {
			return !fi.IsDir()
		}
	}
	return false
}

var _ Coordinator = (*FileStore)(nil)

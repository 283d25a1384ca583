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
	"strconv"
	"sync"
	"time"
)

// ErrCorruptStore is matched (errors.Is) by the error FileStore.Load returns
// when the file exists but does not hold a token in the expected format. The
// file is left untouched for inspection; the error names the file and the
// problem but never its contents.
var ErrCorruptStore = errors.New("tokensource: token store is corrupt")

// fileFormatVersion is written to every file; Load refuses other versions
// rather than guess.
const fileFormatVersion = 1

type fileToken struct {
	Version      int       `json:"version"`
	AccessToken  string    `json:"access_token"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	Expiry       time.Time `json:"expiry,omitzero"`
}

// FileStore is a Store that keeps the token in a JSON file, readable only by
// its owner (mode 0600). Save replaces the file atomically: it writes a
// temporary file in the same directory, syncs it, renames it over the old
// file and syncs the directory, so a crash at any point leaves either the
// old or the new token, never a mix. It is safe for concurrent use within a
// process; it does not coordinate several processes.
type FileStore struct {
	path string
	mu   sync.Mutex

	// rename is os.Rename; tests replace it to simulate a crash before the
	// rename.
	rename func(oldpath, newpath string) error
}

// NewFileStore returns a FileStore for the file at path. Nothing is read or
// created until the first Load or Save; the directory must exist.
func NewFileStore(path string) *FileStore {
	return &FileStore{path: path, rename: os.Rename}
}

// Path returns the file's path.
func (f *FileStore) Path() string { return f.path }

// Load reads the token. A missing file is an empty store: (nil, nil). A file
// that cannot be parsed yields an error matching ErrCorruptStore, and the
// file is not modified.
func (f *FileStore) Load(ctx context.Context) (*Token, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	data, err := os.ReadFile(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tokensource: reading token file: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var ft fileToken
	if err := dec.Decode(&ft); err != nil {
		return nil, fmt.Errorf("%w: %s: %s", ErrCorruptStore, f.path, describeJSONError(err))
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: %s: unexpected data after the token", ErrCorruptStore, f.path)
	}
	if ft.Version != fileFormatVersion {
		return nil, fmt.Errorf("%w: %s: unsupported format version %d (want %d)", ErrCorruptStore, f.path, ft.Version, fileFormatVersion)
	}
	if ft.AccessToken == "" && ft.RefreshToken == "" {
		return nil, fmt.Errorf("%w: %s: neither an access token nor a refresh token", ErrCorruptStore, f.path)
	}
	return &Token{AccessToken: ft.AccessToken, RefreshToken: ft.RefreshToken, Expiry: ft.Expiry}, nil
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

// Save writes t atomically with mode 0600. If it fails, the previous file is
// intact and no temporary file is left behind (a crash can leave one, named
// ".<name>.tmp-*"; it is ignored by Load and harmless).
func (f *FileStore) Save(ctx context.Context, t *Token) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if t == nil {
		return errNilToken
	}
	data, err := json.Marshal(fileToken{
		Version:      fileFormatVersion,
		AccessToken:  t.AccessToken,
		RefreshToken: t.RefreshToken,
		Expiry:       t.Expiry,
	})
	if err != nil {
		return fmt.Errorf("tokensource: encoding token: %w", err)
	}
	data = append(data, '\n')

	f.mu.Lock()
	defer f.mu.Unlock()
	dir, base := filepath.Split(f.path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("tokensource: saving token: %w", err)
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
		return fmt.Errorf("tokensource: saving token: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("tokensource: saving token: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("tokensource: saving token: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("tokensource: saving token: %w", err)
	}
	if err := f.rename(tmpName, f.path); err != nil {
		return fmt.Errorf("tokensource: saving token: %w", err)
	}
	committed = true
	// Sync the directory so the rename itself survives a power loss.
	// Windows cannot open a directory for syncing; its rename is durable
	// enough for this purpose.
	if runtime.GOOS != "windows" {
		d, err := os.Open(dir)
		if err != nil {
			return fmt.Errorf("tokensource: saving token: syncing directory: %w", err)
		}
		err = d.Sync()
		_ = d.Close()
		if err != nil {
			return fmt.Errorf("tokensource: saving token: syncing directory: %w", err)
		}
	}
	return nil
}

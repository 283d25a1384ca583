package tokensource

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fleetWords are the words of coordination among several members; an error
// about one FileStore's path must not use them.
var fleetWords = []string{"lease", "fleet", "coordinator"}

// assertStoreUnusable checks that err reports an unusable FileStore path in
// its own words: it matches ErrStoreUnusable and the operating system's
// error, not ErrCoordinatorUnavailable, and names want.
func assertStoreUnusable(t *testing.T, err error, want string) {
	t.Helper()
	if !errors.Is(err, ErrStoreUnusable) {
		t.Fatalf("err = %v, want it to match ErrStoreUnusable", err)
	}
	if errors.Is(err, ErrCoordinatorUnavailable) {
		t.Errorf("err = %v matches ErrCoordinatorUnavailable, a transient outage", err)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("%q", want)) {
		t.Errorf("err = %q, want it to name %q", err, want)
	}
	var pe *fs.PathError
	if !errors.As(err, &pe) {
		t.Errorf("err = %v does not wrap the operating system's error", err)
	}
}

func assertNoFleetWords(t *testing.T, err error, path string) {
	t.Helper()
	msg := strings.ToLower(strings.ReplaceAll(err.Error(), filepath.Dir(path), "")) // the test's temporary path may hold a word
	for _, w := range fleetWords {
		if strings.Contains(msg, w) {
			t.Errorf("err = %q speaks of the %s; the path is wrong, whatever the other members do", err, w)
		}
	}
}

// A FileStore whose path cannot work is reported by the first TryLease or
// Save in its own words: the directory or file and the cause.
func TestFileStoreUnusablePath(t *testing.T) {
	for name, setup := range map[string]func(t *testing.T) (path, want string){
		"missing directory": func(t *testing.T) (string, string) {
			dir := filepath.Join(t.TempDir(), "no-such-dir")
			return filepath.Join(dir, "token.json"), dir
		},
		"directory is a file": func(t *testing.T) (string, string) {
			file := filepath.Join(t.TempDir(), "file")
			if err := os.WriteFile(file, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(file, "token.json"), file
		},
		"part of the directory is a file": func(t *testing.T) (string, string) {
			file := filepath.Join(t.TempDir(), "file")
			if err := os.WriteFile(file, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(file, "sub", "token.json"), filepath.Join(file, "sub")
		},
	} {
		t.Run(name, func(t *testing.T) {
			path, want := setup(t)
			f := NewFileStore(path)
			l, err := f.TryLease(ctxBG)
			if l != nil {
				t.Fatal("TryLease returned a lease")
			}
			assertStoreUnusable(t, err, want)
			assertNoFleetWords(t, err, path)
			err = f.Save(ctxBG, &Token{AccessToken: "a"})
			assertStoreUnusable(t, err, want)
			assertNoFleetWords(t, err, path)
		})
	}
}

func TestFileStoreMissingDirectoryMessage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "no-such-dir")
	path := filepath.Join(dir, "token.json")
	_, err := NewFileStore(path).TryLease(ctxBG)
	want := fmt.Sprintf("tokensource: FileStore %q: directory %q does not exist", path, dir)
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %s", err, want)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("err = %v does not match fs.ErrNotExist", err)
	}
}

// Load reads a missing directory as an empty store (see
// TestFileStoreMissingDirectory) but reports the other unusable paths.
func TestFileStoreLoadUnusablePath(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := NewFileStore(filepath.Join(file, "token.json")).Load(ctxBG)
	assertStoreUnusable(t, err, file)

	dir := t.TempDir()
	_, err = NewFileStore(dir).LoadRecord(ctxBG)
	assertStoreUnusable(t, err, dir)
	if !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("err = %q, want it to say the path is a directory", err)
	}
}

// A denied access in an existing directory is a configuration mistake too;
// other failures there are not. The errors are made up: the tests may run
// as root, whom permissions do not stop.
func TestFileStoreUnusableCauses(t *testing.T) {
	dir := t.TempDir()
	f := NewFileStore(filepath.Join(dir, "token.json"))
	denied := &fs.PathError{Op: "open", Path: f.lockPath, Err: fs.ErrPermission}
	err := f.unusable(denied)
	if !errors.Is(err, ErrStoreUnusable) || !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("unusable(permission denied) = %v, want ErrStoreUnusable wrapping it", err)
	}
	want := fmt.Sprintf("tokensource: FileStore %q: permission denied in directory %q", f.path, dir)
	if err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	ioErr := &fs.PathError{Op: "open", Path: f.lockPath, Err: errors.New("input/output error")}
	if err := f.unusable(ioErr); err != nil {
		t.Errorf("unusable(I/O error) = %v, want nil: not a configuration mistake", err)
	}
}

// A Source on a FileStore whose directory does not exist fails with the
// FileStore's error, matching ErrStoreUnusable and not
// ErrCoordinatorUnavailable, and does not refresh, with or without
// WithUncoordinatedRefresh.
func TestSourceFileStoreMissingDirectory(t *testing.T) {
	for name, opts := range map[string][]Option{"default": nil, "WithUncoordinatedRefresh": {WithUncoordinatedRefresh()}} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "no-such-dir")
			r := sequence(time.Now, time.Hour) // client credentials: no token to begin with
			s := New(r, append([]Option{WithStore(NewFileStore(filepath.Join(dir, "token.json")))}, opts...)...)
			defer mustClose(t, s)
			_, err := s.Token(ctxBG)
			assertStoreUnusable(t, err, dir)
			if n := r.calls.Load(); n != 0 {
				t.Errorf("%d Refresher calls, want 0: the store cannot keep the token", n)
			}
		})
	}
}

// The Source passes the FileStore's error on in the FileStore's words: a
// process using a FileStore for persistence alone has no fleet.
func TestSourceFileStoreMissingDirectoryNoFleetWords(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "no-such-dir")
	r := sequence(time.Now, time.Hour) // client credentials: no token to begin with
	path := filepath.Join(dir, "token.json")
	s := New(r, WithStore(NewFileStore(path)))
	defer mustClose(t, s)
	_, err := s.Token(ctxBG)
	assertStoreUnusable(t, err, dir)
	assertNoFleetWords(t, err, path)
}

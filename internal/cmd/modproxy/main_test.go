package main

import (
	"archive/zip"
	"cmp"
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// writeRepo writes files (slash-separated name -> content) under a new
// directory and returns it with the sorted names, as gitFiles would list
// them.
func writeRepo(t *testing.T, files map[string]string) (string, []string) {
	t.Helper()
	if _, err := exec.LookPath(cmp.Or(os.Getenv("GO"), "go")); err != nil {
		t.Fatalf("the go command is needed: %v", err)
	}
	root := t.TempDir()
	var names []string
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return root, names
}

var twoModules = map[string]string{
	"go.mod":                  "module example.com/m\n\ngo 1.25.0\n",
	"a.go":                    "package m\n",
	"x/y.go":                  "package x\n",
	"x/testdata/mod/go.mod":   "module example.com/fixture\n",
	"x/testdata/mod/c.go":     "package fixture\n",
	"x/testdata/plain.txt":    "data\n",
	"sub/go.mod":              "module example.com/m/sub\n\ngo 1.25.0\n\nrequire example.com/m v0.3.0\n",
	"sub/b.go":                "package sub\n",
	"sub/deep/Upper/d.go":     "package upper\n",
	"sub/deep/Upper/notes.md": "notes\n",
}

func zipNames(t *testing.T, file string) []string {
	t.Helper()
	zr, err := zip.OpenReader(file)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	var names []string
	for _, f := range zr.File {
		names = append(names, f.Name)
	}
	slices.Sort(names)
	return names
}

// TestWriteProxy: each module's zip holds its own files under
// path@version/, without a nested module's subtree (a go.mod under testdata
// included) and without what is not a regular file; list, .info and .mod
// are what the go command reads.
func TestWriteProxy(t *testing.T) {
	root, files := writeRepo(t, twoModules)
	if err := os.Symlink("a.go", filepath.Join(root, "link.go")); err != nil {
		t.Fatal(err)
	}
	files = append(files, "link.go", "deleted.go") // tracked, but deleted
	mods, err := readModules(root, files)
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) != 2 {
		t.Fatalf("%d modules, want 2 (none under testdata)", len(mods))
	}
	v, err := releaseVersion(mods, "")
	if err != nil || v != "v0.3.0" {
		t.Fatalf("releaseVersion = %q, %v; want v0.3.0, the version sub requires", v, err)
	}
	out := t.TempDir()
	now := time.Date(2030, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600))
	if err := writeProxy(root, out, v, mods, files, now); err != nil {
		t.Fatal(err)
	}

	core := filepath.Join(out, "example.com", "m", "@v")
	want := []string{"example.com/m@v0.3.0/a.go", "example.com/m@v0.3.0/go.mod", "example.com/m@v0.3.0/x/testdata/plain.txt", "example.com/m@v0.3.0/x/y.go"}
	if got := zipNames(t, filepath.Join(core, "v0.3.0.zip")); !slices.Equal(got, want) {
		t.Errorf("core zip holds\n%q\nwant\n%q", got, want)
	}
	sub := filepath.Join(out, "example.com", "m", "sub", "@v")
	want = []string{"example.com/m/sub@v0.3.0/b.go", "example.com/m/sub@v0.3.0/deep/Upper/d.go", "example.com/m/sub@v0.3.0/deep/Upper/notes.md", "example.com/m/sub@v0.3.0/go.mod"}
	if got := zipNames(t, filepath.Join(sub, "v0.3.0.zip")); !slices.Equal(got, want) {
		t.Errorf("sub zip holds\n%q\nwant\n%q", got, want)
	}

	if b, err := os.ReadFile(filepath.Join(sub, "v0.3.0.mod")); err != nil || string(b) != twoModules["sub/go.mod"] {
		t.Errorf("sub's .mod = %q, %v; want its go.mod", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(sub, "list")); err != nil || string(b) != "v0.3.0\n" {
		t.Errorf("list = %q, %v; want the version on a line", b, err)
	}
	b, err := os.ReadFile(filepath.Join(core, "v0.3.0.info"))
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Version string
		Time    time.Time
	}
	if err := json.Unmarshal(b, &info); err != nil || info.Version != "v0.3.0" || !info.Time.Equal(now.Truncate(time.Second)) {
		t.Errorf(".info = %s (%v); want version v0.3.0 and the time", b, err)
	}
}

// TestReleaseVersionMismatch: releasing another version than the go.mod
// files require names each go.mod to update.
func TestReleaseVersionMismatch(t *testing.T) {
	root, files := writeRepo(t, twoModules)
	mods, err := readModules(root, files)
	if err != nil {
		t.Fatal(err)
	}
	_, err = releaseVersion(mods, "v0.4.0")
	if err == nil || !strings.Contains(err.Error(), "sub/go.mod requires example.com/m v0.3.0") || !strings.Contains(err.Error(), "scripts/tidy.sh v0.4.0") {
		t.Fatalf("releaseVersion(v0.4.0) = %v; want an error naming sub/go.mod and the fix", err)
	}
	for _, bad := range []string{"0.3.0", "v0.3", "v0.3.0+build", "v2.0.0"} {
		if _, err := releaseVersion(mods, bad); err == nil {
			t.Errorf("releaseVersion(%s) succeeded; want an error", bad)
		}
	}
}

// TestReleaseVersionDisagreement: without a version, go.mod files that
// require different versions are an error, not a guess.
func TestReleaseVersionDisagreement(t *testing.T) {
	files := with(twoModules, map[string]string{
		"other/go.mod": "module example.com/m/other\n\ngo 1.25.0\n\nrequire example.com/m v0.2.0\n",
	})
	root, names := writeRepo(t, files)
	mods, err := readModules(root, names)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := releaseVersion(mods, ""); err == nil || !strings.Contains(err.Error(), "other/go.mod requires example.com/m v0.2.0") {
		t.Fatalf("releaseVersion = %q, %v; want an error naming the go.mod files", v, err)
	}
}

// TestReplaceRefused: a directory replacement, which users' builds ignore,
// fails the release.
func TestReplaceRefused(t *testing.T) {
	files := with(twoModules, map[string]string{
		"sub/go.mod": twoModules["sub/go.mod"] + "\nreplace example.com/m => ../\n",
	})
	root, names := writeRepo(t, files)
	mods, err := readModules(root, names)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := releaseVersion(mods, ""); err == nil || !strings.Contains(err.Error(), "sub/go.mod replaces example.com/m") {
		t.Fatalf("releaseVersion = %v; want the replace directive refused", err)
	}
}

func TestEscape(t *testing.T) {
	if got := escape("github.com/Azure/SDK"); got != "github.com/!azure/!s!d!k" {
		t.Errorf("escape = %q", got)
	}
}

// with returns a copy of a with b's entries added.
func with(a, b map[string]string) map[string]string {
	m := maps.Clone(a)
	maps.Copy(m, b)
	return m
}

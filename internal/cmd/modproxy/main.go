// Command modproxy writes a module proxy in the layout that GOPROXY=file://
// reads, holding every module of this repository at one version, as tagging
// that version would publish them. make release-check installs from it
// (scripts/release-check.sh).
//
// Usage:
//
//	go run ./internal/cmd/modproxy -out DIR [-version vX.Y.Z] [-repo DIR]
//
// A module is a directory with a go.mod outside testdata. Its zip holds the
// files git tracks or would track (git ls-files --cached --others
// --exclude-standard) under that directory, minus the subtrees of nested
// modules, each under the prefix module@version/, as the go command packs a
// module from a tag.
//
// Without -version the version is the one at which the modules require each
// other; the go.mod files must agree on it. With -version they must require
// exactly that version, or modproxy names each go.mod to update: a user's
// build would otherwise fetch another version of a module of the repository
// than the one released with it. A go.mod that replaces a module with a
// directory is refused too, since users' builds ignore a dependency's
// replace directives.
//
// modproxy prints each module it wrote as path@version, one per line.
package main

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

func main() {
	out := flag.String("out", "", "the directory to write the proxy into (required; created if missing)")
	version := flag.String("version", "", "the version to publish (default: the one the go.mod files require of each other)")
	repo := flag.String("repo", ".", "the repository's root")
	flag.Parse()
	if *out == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*repo, *out, *version); err != nil {
		fmt.Fprintln(os.Stderr, "modproxy:", err)
		os.Exit(1)
	}
}

func run(repo, out, version string) error {
	files, err := gitFiles(repo)
	if err != nil {
		return err
	}
	mods, err := readModules(repo, files)
	if err != nil {
		return err
	}
	v, err := releaseVersion(mods, version)
	if err != nil {
		return err
	}
	return writeProxy(repo, out, v, mods, files, time.Now())
}

// gitFiles lists the files of the repository at root that a commit of its
// working tree would hold, slash-separated and relative to root.
func gitFiles(root string) ([]string, error) {
	cmd := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("git ls-files: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	var files []string
	for _, f := range strings.Split(string(out), "\x00") {
		if f != "" {
			files = append(files, f)
		}
	}
	sort.Strings(files) // the untracked files come after the tracked ones
	return files, nil
}

// module is one module of the repository.
type module struct {
	dir    string // slash-separated, relative to the root; "." for the root
	path   string
	goMod  []byte
	parsed goModJSON
}

// goModJSON is the part of `go mod edit -json` that modproxy reads.
type goModJSON struct {
	Module  struct{ Path string }
	Require []struct {
		Path, Version string
	}
	Replace []struct {
		Old, New struct{ Path, Version string }
	}
}

// readModules finds the modules among files (directories with a go.mod,
// outside testdata) and reads their go.mod files.
func readModules(root string, files []string) ([]*module, error) {
	var mods []*module
	for _, f := range files {
		if path.Base(f) != "go.mod" || inTestdata(f) {
			continue
		}
		file := filepath.Join(root, filepath.FromSlash(f))
		data, err := os.ReadFile(file)
		if errors.Is(err, os.ErrNotExist) {
			continue // tracked, but deleted in the working tree
		}
		if err != nil {
			return nil, err
		}
		m := &module{dir: path.Dir(f), goMod: data}
		if err := goModEdit(file, &m.parsed); err != nil {
			return nil, err
		}
		m.path = m.parsed.Module.Path
		mods = append(mods, m)
	}
	if len(mods) == 0 {
		return nil, errors.New("no go.mod found")
	}
	return mods, nil
}

func inTestdata(f string) bool {
	return slices.Contains(strings.Split(path.Dir(f), "/"), "testdata")
}

// goModEdit parses a go.mod file with the go command, so that every detail
// of the syntax is read as the go command reads it.
func goModEdit(file string, v *goModJSON) error {
	goCmd := os.Getenv("GO")
	if goCmd == "" {
		goCmd = "go"
	}
	cmd := exec.Command(goCmd, "mod", "edit", "-json", file)
	cmd.Env = append(os.Environ(), "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("go mod edit -json %s: %v: %s", file, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return json.Unmarshal(out, v)
}

// semver is the form of a release version: vMAJOR.MINOR.PATCH with an
// optional pre-release, and no build metadata, which module versions cannot
// carry.
var semver = regexp.MustCompile(`^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$`)

// releaseVersion returns the version to publish: want, or, when want is
// empty, the version at which the modules require each other. It fails,
// naming the go.mod files to update, if they require another version of a
// module of the repository, and it refuses directory replacements.
func releaseVersion(mods []*module, want string) (string, error) {
	ours := map[string]bool{}
	for _, m := range mods {
		ours[m.path] = true
	}
	var problems []string
	type requirement struct{ gomod, path, version string }
	var reqs []requirement
	versions := map[string]bool{}
	for _, m := range mods {
		gomod := path.Join(m.dir, "go.mod")
		for _, r := range m.parsed.Require {
			if ours[r.Path] {
				reqs = append(reqs, requirement{gomod, r.Path, r.Version})
				versions[r.Version] = true
			}
		}
		for _, r := range m.parsed.Replace {
			if r.New.Version == "" {
				problems = append(problems, fmt.Sprintf("%s replaces %s with the directory %s, which users' builds ignore: remove it (go.work serves local development)", gomod, r.Old.Path, r.New.Path))
			}
		}
	}
	if want == "" {
		if len(versions) == 0 {
			return "", errors.New("no go.mod requires another module of the repository: give the version")
		}
		if len(versions) > 1 {
			problems = append(problems, "the go.mod files require different versions of the repository's modules: give the version to release")
		} else {
			for v := range versions {
				want = v
			}
		}
	}
	if want != "" {
		if err := checkVersion(want, mods); err != nil {
			return "", err
		}
	}
	stale := map[string][]string{} // go.mod -> "path version" required there
	var files []string
	for _, r := range reqs {
		if r.version != want {
			if stale[r.gomod] == nil {
				files = append(files, r.gomod)
			}
			stale[r.gomod] = append(stale[r.gomod], r.path+" "+r.version)
		}
	}
	if len(files) > 0 {
		sort.Strings(files)
		release := want
		if release == "" {
			release = "VERSION"
		}
		msg := fmt.Sprintf("releasing %s needs every module of the repository required at %s; update these go.mod files (scripts/tidy.sh %s does it, and go.work with them; see docs/releasing.md):", release, release, release)
		for _, f := range files {
			msg += fmt.Sprintf("\n\t%s requires %s", f, strings.Join(stale[f], ", "))
		}
		problems = append(problems, msg)
	}
	if len(problems) > 0 {
		return "", errors.New(strings.Join(problems, "\n"))
	}
	return want, nil
}

// checkVersion checks that v is a release version the modules can carry: a
// module path without a /vN suffix takes only v0 and v1.
func checkVersion(v string, mods []*module) error {
	sm := semver.FindStringSubmatch(v)
	if sm == nil {
		return fmt.Errorf("version %q is not of the form vMAJOR.MINOR.PATCH[-PRERELEASE]", v)
	}
	major, _ := strconv.Atoi(sm[1])
	if major < 2 {
		return nil
	}
	for _, m := range mods {
		if !strings.HasSuffix(m.path, "/v"+sm[1]) {
			return fmt.Errorf("version %s needs the module path %s to end in /v%d", v, m.path, major)
		}
	}
	return nil
}

// writeProxy writes every module at version v into out, in the layout the
// go command reads from a GOPROXY: <escaped path>/@v/list, v.info, v.mod and
// v.zip.
func writeProxy(root, out, v string, mods []*module, files []string, now time.Time) error {
	boundaries := map[string]bool{}
	for _, f := range files {
		if path.Base(f) == "go.mod" {
			boundaries[path.Dir(f)] = true
		}
	}
	owned := map[string][]string{} // module dir -> its files
	for _, f := range files {
		d := owner(f, boundaries)
		owned[d] = append(owned[d], f)
	}
	info, err := json.Marshal(struct {
		Version string
		Time    time.Time
	}{v, now.UTC().Truncate(time.Second)})
	if err != nil {
		return err
	}
	for _, m := range mods {
		dir := filepath.Join(out, filepath.FromSlash(escape(m.path)), "@v")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		base := filepath.Join(dir, escape(v))
		if err := writeZip(base+".zip", root, m, v, owned[m.dir]); err != nil {
			return err
		}
		for name, data := range map[string][]byte{
			base + ".mod":              m.goMod,
			base + ".info":             info,
			filepath.Join(dir, "list"): []byte(v + "\n"),
		} {
			if err := os.WriteFile(name, data, 0o644); err != nil {
				return err
			}
		}
		fmt.Printf("%s@%s\n", m.path, v)
	}
	return nil
}

// owner returns the directory of the innermost module holding file f, or
// "" if none does. boundaries holds every directory with a go.mod, those
// under testdata too: such a go.mod makes no module of the repository, but it
// still ends the enclosing one, as in the zip the go command builds.
func owner(f string, boundaries map[string]bool) string {
	for d := path.Dir(f); ; d = path.Dir(d) {
		if boundaries[d] {
			return d
		}
		if d == "." {
			return ""
		}
	}
}

// writeZip writes m's files into a module zip: each file under
// "<path>@<version>/", relative to the module's directory, regular files
// only.
func writeZip(name, root string, m *module, v string, files []string) error {
	zf, err := os.Create(name)
	if err != nil {
		return err
	}
	zw := zip.NewWriter(zf)
	prefix := m.path + "@" + v + "/"
	for _, f := range files {
		rel := f
		if m.dir != "." {
			rel = strings.TrimPrefix(f, m.dir+"/")
		}
		if err := addFile(zw, filepath.Join(root, filepath.FromSlash(f)), prefix+rel); err != nil {
			zf.Close()
			return err
		}
	}
	if err := zw.Close(); err != nil {
		zf.Close()
		return err
	}
	return zf.Close()
}

// addFile adds the regular file src as name; it skips a file deleted from
// the working tree and anything that is not a regular file (the go command
// leaves symbolic links out of a module too).
func addFile(zw *zip.Writer, src, name string) error {
	fi, err := os.Lstat(src)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	r, err := os.Open(src)
	if err != nil {
		return err
	}
	defer r.Close()
	w, err := zw.Create(name)
	if err != nil {
		return err
	}
	_, err = io.Copy(w, r)
	return err
}

// escape applies the go command's case encoding of module paths and
// versions in a proxy: an upper-case letter becomes "!" and its lower case.
func escape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if 'A' <= r && r <= 'Z' {
			b.WriteByte('!')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

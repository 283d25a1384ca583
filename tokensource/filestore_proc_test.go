package tokensource

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests of FileStore across real processes: the test binary re-executes
// itself with fileStoreHelperEnv set, and TestMain (main_test.go) runs the
// named helper role instead of the tests.

const (
	fileStoreHelperEnv = "TOKENSOURCE_FILESTORE_HELPER"
	helperPathEnv      = "TOKENSOURCE_FILESTORE_PATH"
	helperTTLEnv       = "TOKENSOURCE_FILESTORE_TTL"
	helperCountEnv     = "TOKENSOURCE_FILESTORE_N"
)

// runFileStoreHelper runs a helper role in a worker process and returns its
// exit code.
func runFileStoreHelper(role string) int {
	ttl, err := time.ParseDuration(os.Getenv(helperTTLEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper: bad TTL:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := NewFileStore(os.Getenv(helperPathEnv), WithFileLeaseTTL(ttl), WithFilePollInterval(2*time.Millisecond))
	switch role {
	case "count":
		err = helperCount(ctx, f)
	case "hold":
		err = helperHold(ctx, f)
	default:
		if run := platformHelperRoles[role]; run != nil {
			err = run(ctx, f)
		} else {
			err = fmt.Errorf("unknown role %q", role)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	return 0
}

// platformHelperRoles are the helper roles that only some platforms have,
// registered by the files of those platforms' tests.
var platformHelperRoles = map[string]func(context.Context, *FileStore) error{}

// countResult is what a "count" helper reports on stdout, as JSON.
type countResult struct {
	Commits  int // successful commits
	Refused  int // commits refused with ErrLeaseLost
	Overlaps int // times another process held the lease at the same time
	// Adoptions are the delays, in ns, from a peer's start of a commit to
	// this process having read it after its Wait returned.
	Adoptions []int64
}

// helperCount commits the counter in the shared record, plus one, until it
// has made $TOKENSOURCE_FILESTORE_N successful commits. While it holds the
// lease it keeps a marker file created with O_EXCL, so that two holders at
// once would be seen.
func helperCount(ctx context.Context, f *FileStore) error {
	n, err := strconv.Atoi(os.Getenv(helperCountEnv))
	if err != nil {
		return err
	}
	var res countResult
	marker := f.Path() + ".holder"
	for res.Commits < n {
		rec, err := f.LoadRecord(ctx)
		if err != nil {
			return err
		}
		l, err := f.TryLease(ctx)
		if err != nil {
			return err
		}
		if l == nil {
			if err := f.Wait(ctx, rec.Version); err != nil {
				return err
			}
			if now, err := f.LoadRecord(ctx); err == nil && now.Version != rec.Version && now.Token != nil {
				if start, err := strconv.ParseInt(now.Token.RefreshToken, 10, 64); err == nil {
					res.Adoptions = append(res.Adoptions, time.Now().UnixNano()-start)
				}
			}
			continue
		}
		count := 0
		if r := l.Record(); r.Token != nil {
			if count, err = strconv.Atoi(r.Token.AccessToken); err != nil {
				return err
			}
		}
		if m, err := os.OpenFile(marker, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err != nil {
			res.Overlaps++
		} else {
			_ = m.Close()
			time.Sleep(200 * time.Microsecond) // a holder's work, so that an overlap could be seen
			if err := os.Remove(marker); err != nil {
				return err
			}
		}
		err = l.Commit(ctx, &Token{AccessToken: strconv.Itoa(count + 1), RefreshToken: strconv.FormatInt(time.Now().UnixNano(), 10)})
		switch {
		case err == nil:
			res.Commits++
		case errors.Is(err, ErrLeaseLost):
			res.Refused++
		default:
			return err
		}
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// helperHold takes the lease, prints "held <revision>", then obeys commands
// on stdin: "commit <access token>" prints "ok", "lost" (ErrLeaseLost) or
// "error ..."; end of input ends the process.
func helperHold(ctx context.Context, f *FileStore) error {
	var l Lease
	for l == nil {
		rec, err := f.LoadRecord(ctx)
		if err != nil {
			return err
		}
		if l, err = f.TryLease(ctx); err != nil {
			return err
		}
		if l == nil {
			if err := f.Wait(ctx, rec.Version); err != nil {
				return err
			}
		}
	}
	fmt.Printf("held %d\n", l.Record().Version)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		if cmd != "commit" {
			return fmt.Errorf("unknown command %q", cmd)
		}
		switch err := l.Commit(ctx, &Token{AccessToken: arg, RefreshToken: "rt-" + arg}); {
		case err == nil:
			fmt.Println("ok")
		case errors.Is(err, ErrLeaseLost):
			fmt.Println("lost")
		default:
			fmt.Println("error", err)
		}
	}
	return sc.Err()
}

// helperProc is a running helper process.
type helperProc struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Scanner
	stderr bytes.Buffer // read only after wait

	once    sync.Once
	waitErr error
}

// startHelper starts the test binary as a helper process in role on the
// FileStore at path; it is killed at the end of the test if still running.
func startHelper(t *testing.T, role, path string, ttl time.Duration, n int) *helperProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := &helperProc{cmd: exec.Command(exe, "-test.run=^$")}
	p.cmd.Env = append(os.Environ(), fileStoreHelperEnv+"="+role, helperPathEnv+"="+path,
		helperTTLEnv+"="+ttl.String(), helperCountEnv+"="+strconv.Itoa(n))
	p.cmd.Stderr = &p.stderr
	if p.in, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.out = bufio.NewScanner(out)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.in.Close()
		_ = p.cmd.Process.Kill()
		_ = p.wait()
	})
	return p
}

func (p *helperProc) wait() error {
	p.once.Do(func() { p.waitErr = p.cmd.Wait() })
	return p.waitErr
}

// line reads the helper's next output line.
func (p *helperProc) line(t *testing.T) string {
	t.Helper()
	if !p.out.Scan() {
		_ = p.cmd.Process.Kill()
		t.Fatalf("helper ended without output (%v); stderr:\n%s", p.wait(), p.stderr.String())
	}
	return p.out.Text()
}

// send writes a command line to the helper.
func (p *helperProc) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(p.in, line+"\n"); err != nil {
		t.Fatal(err)
	}
}

// finish closes the helper's input and checks that it exits cleanly.
func (p *helperProc) finish(t *testing.T) {
	t.Helper()
	_ = p.in.Close()
	if err := p.wait(); err != nil {
		t.Errorf("helper: %v; stderr:\n%s", err, p.stderr.String())
	}
}

// kill ends the helper with SIGKILL (TerminateProcess on Windows).
func (p *helperProc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = p.wait()
}

// Eight processes each take the lease, read the counter and commit it plus
// one, many times: the final counter and revision equal the number of
// successful commits (no commit lost or overwritten), and no two processes
// held the lease at once.
func TestFileStoreProcessesCount(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	const procs, each = 8, 25
	start := time.Now()
	var ps []*helperProc
	for range procs {
		ps = append(ps, startHelper(t, "count", path, 5*time.Second, each))
	}
	var total countResult
	for i, p := range ps {
		var res countResult
		if err := json.Unmarshal([]byte(p.line(t)), &res); err != nil {
			t.Fatalf("helper %d: %v", i, err)
		}
		p.finish(t)
		total.Commits += res.Commits
		total.Refused += res.Refused
		total.Overlaps += res.Overlaps
		total.Adoptions = append(total.Adoptions, res.Adoptions...)
	}
	elapsed := time.Since(start)
	rec := mustRecord(t, NewFileStore(path))
	if rec.Token == nil || rec.Token.AccessToken != strconv.Itoa(total.Commits) || total.Commits != procs*each {
		t.Errorf("counter = %v after %d successful commits, want %d", rec.Token, total.Commits, procs*each)
	}
	if rec.Version != uint64(total.Commits) {
		t.Errorf("revision = %d, want %d (one per commit)", rec.Version, total.Commits)
	}
	if total.Overlaps != 0 {
		t.Errorf("%d times two processes held the lease at once", total.Overlaps)
	}
	slices.Sort(total.Adoptions)
	q := func(p float64) time.Duration {
		if len(total.Adoptions) == 0 {
			return 0
		}
		return time.Duration(total.Adoptions[int(p*float64(len(total.Adoptions)-1))])
	}
	t.Logf("%d processes, %d commits (%d refused) in %v; commit start to adoption by a waiter: p50 %v, p99 %v (%d samples)",
		procs, total.Commits, total.Refused, elapsed.Round(time.Millisecond), q(0.5), q(0.99), len(total.Adoptions))
}

// A holder killed with SIGKILL in the middle of its lease stops renewing it:
// after the TTL another process takes it over and commits.
func TestFileStoreProcessKilledHolder(t *testing.T) {
	t.Parallel()
	path := tokenFile(t)
	const ttl = time.Second
	f := NewFileStore(path, WithFileLeaseTTL(ttl), WithFilePollInterval(5*time.Millisecond))
	if err := f.Save(ctxBG, &Token{AccessToken: "at-0", RefreshToken: "rt-0"}); err != nil {
		t.Fatal(err)
	}
	p := startHelper(t, "hold", path, ttl, 0)
	if got := p.line(t); got != "held 1" {
		t.Fatalf("helper said %q, want held 1", got)
	}
	mustNoLease(t, f, "while a live helper process holds the lease")
	p.kill(t)
	killed := time.Now()
	l := waitTakeover(t, f, 1)
	t.Logf("lease taken over %v after the kill (TTL %v)", time.Since(killed).Round(time.Millisecond), ttl)
	if !l.TakenOver() {
		t.Error("the dead holder's lease was not reported as taken over")
	}
	if rec := l.Record(); rec.Version != 1 || rec.Token.RefreshToken != "rt-0" {
		t.Errorf("lease record = %+v, want revision 1 with rt-0", rec)
	}
	if err := l.Commit(ctxBG, &Token{AccessToken: "at-1", RefreshToken: "rt-1"}); err != nil {
		t.Fatal(err)
	}
	if rec := mustRecord(t, f); rec.Version != 2 || rec.Token.RefreshToken != "rt-1" {
		t.Errorf("record = %+v, want rt-1 at revision 2", rec)
	}
}

// waitTakeover waits, as a Source does, until f gets the lease from a peer
// that holds it over revision version.
func waitTakeover(t *testing.T, f *FileStore, version uint64) Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctxBG, 30*time.Second)
	defer cancel()
	for {
		if err := f.Wait(ctx, version); err != nil {
			t.Fatalf("Wait for the lease: %v", err)
		}
		l, err := f.TryLease(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if l != nil {
			return l
		}
	}
}

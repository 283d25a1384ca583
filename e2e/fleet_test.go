package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// The fleet tests run real processes: the test binary re-executes itself as
// worker processes (see TestMain), each a replica of one service with its own
// Source, all sharing one Store and one rotating refresh token against one
// testserver. They prove the fleet's guarantees across process boundaries: one
// refresh per need, nothing lost, no stall from a dead or paused holder, a hot
// path without I/O, and members going on while the coordinator is down.

// Environment of a worker process.
const (
	envWorker   = "TOKENREFRESH_FLEET_WORKER" // worker index; set only in workers
	envTarget   = "TOKENREFRESH_FLEET_TARGET" // testserver address
	envStore    = "TOKENREFRESH_FLEET_STORE"  // store spec, see openFleetStore
	envDuration = "TOKENREFRESH_FLEET_DURATION"
	envCallers  = "TOKENREFRESH_FLEET_CALLERS"
	envGrant    = "TOKENREFRESH_FLEET_GRANT" // "refresh" (rotating refresh token), "login" (a fresh grant per refresh) or "slowlogin" (the same, slow)
	envLeaseTTL = "TOKENREFRESH_FLEET_LEASE_TTL"
	envTimeout  = "TOKENREFRESH_FLEET_REFRESH_TIMEOUT"
	envTrace    = "TOKENREFRESH_FLEET_TRACE" // "1": also report each commit (see traceCommits)
)

// workerLine is one line a worker writes to its stdout: an event of its
// Source as it happens, then one summary.
type workerLine struct {
	Event   string         `json:"event,omitempty"`
	At      int64          `json:"at,omitempty"` // the event's time, Unix ns by the wall clock (one host: comparable across workers)
	Err     string         `json:"err,omitempty"`
	Summary *workerSummary `json:"summary,omitempty"`
}

type workerSummary struct {
	Calls, Failed int64
	Errors        []string // the first few failures, for the test log
	Stats         tokensource.Stats
}

// fleetConfig describes one fleet run.
type fleetConfig struct {
	workers, callers int
	duration         time.Duration
	tokenTTL         time.Duration
	grant            string
	leaseTTL         time.Duration
	refreshTimeout   time.Duration
	store            func(tb testing.TB) (spec string, st tokensource.Store)
	serverOpts       []testserver.Option
	trace            bool // workers report each commit (commitEvent), for the benchmarks
}

// fleet is a running fleet of worker processes.
type fleet struct {
	t       testing.TB
	srv     *testserver.Server
	ep      *testserver.Endpoint
	store   tokensource.Store
	workers []*worker
}

type worker struct {
	idx     int
	cmd     *exec.Cmd
	stderr  strings.Builder
	mu      sync.Mutex
	events  []workerEvent
	summary *workerSummary
	changed chan struct{} // closed and replaced on every event; guarded by mu
	started chan struct{} // closed at the worker's first RefreshStarted
	once    sync.Once
	done    chan struct{} // closed when stdout is drained
}

// workerEvent is one event a worker reported: an EventKind's name, or
// commitEvent.
type workerEvent struct {
	kind string
	at   time.Time
}

// waitEvent waits until the worker has reported kind n times.
func (w *worker) waitEvent(ctx context.Context, kind string, n int) error {
	for {
		w.mu.Lock()
		got, ch := 0, w.changed
		for _, e := range w.events {
			if e.kind == kind {
				got++
			}
		}
		w.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-w.done:
			return fmt.Errorf("worker %d exited after %d %s events, want %d", w.idx, got, kind, n)
		case <-ctx.Done():
			return fmt.Errorf("worker %d: %d %s events, want %d: %w", w.idx, got, kind, n, ctx.Err())
		}
	}
}

func (w *worker) eventCount(kind string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, e := range w.events {
		if e.kind == kind {
			n++
		}
	}
	return n
}

// startFleet starts the testserver, seeds the store with a login, and starts
// the workers.
func startFleet(t testing.TB, cfg fleetConfig) *fleet {
	t.Helper()
	srv := testserver.New(append([]testserver.Option{testserver.WithAccessTokenTTL(cfg.tokenTTL)}, cfg.serverOpts...)...)
	ep, err := srv.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ep.Stop)
	spec, st := cfg.store(t)
	login, err := srv.IssueToken(testserver.DefaultUser)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Save(context.Background(), login); err != nil {
		t.Fatal(err)
	}
	f := &fleet{t: t, srv: srv, ep: ep, store: st}
	for i := range cfg.workers {
		f.workers = append(f.workers, f.startWorker(i, spec, cfg))
	}
	return f
}

func (f *fleet) startWorker(i int, spec string, cfg fleetConfig) *worker {
	f.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		f.t.Fatal(err)
	}
	w := &worker{idx: i, started: make(chan struct{}), done: make(chan struct{}), changed: make(chan struct{})}
	w.cmd = exec.Command(exe, "-test.run=^$")
	w.cmd.Env = append(os.Environ(),
		envWorker+"="+fmt.Sprint(i),
		envTarget+"="+f.ep.Addr(),
		envStore+"="+spec,
		envDuration+"="+cfg.duration.String(),
		envCallers+"="+fmt.Sprint(cfg.callers),
		envGrant+"="+cfg.grant,
		envLeaseTTL+"="+cfg.leaseTTL.String(),
		envTimeout+"="+cfg.refreshTimeout.String(),
	)
	if cfg.trace {
		w.cmd.Env = append(w.cmd.Env, envTrace+"=1")
	}
	w.cmd.Stderr = &w.stderr
	out, err := w.cmd.StdoutPipe()
	if err != nil {
		f.t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	go w.read(out)
	f.t.Cleanup(func() {
		_ = w.cmd.Process.Signal(syscall.SIGCONT) // never leave a stopped worker behind
		_ = w.cmd.Process.Kill()
		<-w.done
		_ = w.cmd.Wait()
	})
	return w
}

func (w *worker) read(r io.Reader) {
	defer close(w.done)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var l workerLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		w.mu.Lock()
		if l.Event != "" {
			w.events = append(w.events, workerEvent{kind: l.Event, at: time.Unix(0, l.At)})
			close(w.changed)
			w.changed = make(chan struct{})
		}
		if l.Summary != nil {
			w.summary = l.Summary
		}
		w.mu.Unlock()
		if l.Event == tokensource.RefreshStarted.String() {
			w.once.Do(func() { close(w.started) })
		}
	}
}

// wait waits for every worker that was not killed and returns the summed
// results.
func (f *fleet) wait(killed ...*worker) (calls, failed int64, stats []tokensource.Stats) {
	f.t.Helper()
	skip := map[*worker]bool{}
	for _, w := range killed {
		skip[w] = true
	}
	for _, w := range f.workers {
		if skip[w] {
			continue
		}
		<-w.done
		if err := w.cmd.Wait(); err != nil {
			f.t.Errorf("worker %d: %v\n%s", w.idx, err, w.stderr.String())
			continue
		}
		w.mu.Lock()
		s := w.summary
		w.mu.Unlock()
		if s == nil {
			f.t.Errorf("worker %d wrote no summary\n%s", w.idx, w.stderr.String())
			continue
		}
		calls += s.Calls
		failed += s.Failed
		stats = append(stats, s.Stats)
		for _, e := range s.Errors {
			f.t.Logf("worker %d: failed call: %s", w.idx, e)
		}
	}
	return calls, failed, stats
}

// holder returns the first worker to start a refresh, once one does.
func (f *fleet) holder(ctx context.Context) *worker {
	f.t.Helper()
	cases := make(chan *worker, len(f.workers))
	for _, w := range f.workers {
		go func() {
			select {
			case <-w.started:
				cases <- w
			case <-ctx.Done():
			}
		}()
	}
	select {
	case w := <-cases:
		return w
	case <-ctx.Done():
		f.t.Fatal("no worker started a refresh")
		return nil
	}
}

// runFleetWorker is the body of a worker process.
func runFleetWorker() int {
	dur, _ := time.ParseDuration(os.Getenv(envDuration))
	leaseTTL, _ := time.ParseDuration(os.Getenv(envLeaseTTL))
	timeout, _ := time.ParseDuration(os.Getenv(envTimeout))
	var callers int
	fmt.Sscan(os.Getenv(envCallers), &callers)
	target := os.Getenv(envTarget)

	enc := json.NewEncoder(os.Stdout)
	var encMu sync.Mutex
	write := func(l workerLine) {
		encMu.Lock()
		defer encMu.Unlock()
		_ = enc.Encode(l)
	}
	st, closeStore, err := openFleetStore(os.Getenv(envStore), leaseTTL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker: opening the store:", err)
		return 2
	}
	defer closeStore()
	if os.Getenv(envTrace) == "1" {
		st = traceCommits(st, func(start time.Time) {
			write(workerLine{Event: commitEvent, At: start.UnixNano()})
		})
	}

	// The Refresher has a connection of its own: the fleet tests are about
	// the Store, not about wiring.
	authConn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	defer authConn.Close()
	var r tokensource.Refresher = testserver.NewRefresher(authConn, testserver.DefaultUser, testserver.DefaultPassword)
	switch os.Getenv(envGrant) {
	case "login":
		// A grant without rotation, as client credentials: every refresh
		// is a new login, so a second refresh is harmless (it only adds
		// to the issuer's load).
		inner := r
		r = tokensource.RefresherFunc(func(ctx context.Context, _ *tokensource.Token) (*tokensource.Token, error) {
			return inner.Refresh(ctx, nil)
		})
	case "slowlogin":
		// The same from a distant identity provider: every login takes
		// 3 s.
		inner := r
		r = tokensource.RefresherFunc(func(ctx context.Context, _ *tokensource.Token) (*tokensource.Token, error) {
			select {
			case <-time.After(3 * time.Second):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return inner.Refresh(ctx, nil)
		})
	}
	opts := []tokensource.Option{
		tokensource.WithStore(st),
		tokensource.WithObserver(func(ev tokensource.Event) {
			l := workerLine{Event: ev.Kind.String(), At: ev.Time.UnixNano()}
			if ev.Err != nil {
				l.Err = ev.Err.Error()
			}
			write(l)
		}),
	}
	if timeout > 0 {
		opts = append(opts, tokensource.WithRefreshTimeout(timeout))
	}
	src := tokensource.New(r, opts...)
	defer src.Close()

	conn, err := grpc.NewClient(target, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		interceptor.DialOptions(src, interceptor.AllowInsecure())...)...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	defer conn.Close()
	client := echov1.NewEchoServiceClient(conn)

	var calls, failed atomic.Int64
	var errMu sync.Mutex
	var errs []string
	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := client.Echo(ctx, &echov1.EchoRequest{Message: "fleet"})
				cancel()
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					errMu.Lock()
					if len(errs) < 5 {
						errs = append(errs, status.Code(err).String()+": "+err.Error())
					}
					errMu.Unlock()
				}
				// Pacing, so that 8 processes × 32 callers leave the two
				// cores some room (this is not a synchronisation).
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	errMu.Lock()
	write(workerLine{Summary: &workerSummary{Calls: calls.Load(), Failed: failed.Load(), Errors: errs, Stats: src.Stats()}})
	errMu.Unlock()
	return 0
}

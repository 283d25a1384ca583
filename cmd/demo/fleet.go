package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"

	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource/redisstore"
)

// envWorker, when set, makes this binary a fleet worker process: its value
// is the workerSpec as JSON.
const envWorker = "TOKENREFRESH_DEMO_WORKER"

// The stores a fleet phase can share its credential through.
const (
	storeFile  = "file"
	storeRedis = "redis"
)

// workerSpec is what a worker process is told: where the server is, which
// store holds the fleet's credential, and how much load to make.
type workerSpec struct {
	Index       int           `json:"index"`
	Target      string        `json:"target"`
	CAFile      string        `json:"ca_file,omitempty"` // PEM; empty: system roots, or Insecure
	Insecure    bool          `json:"insecure,omitempty"`
	Store       string        `json:"store"` // storeFile or storeRedis
	Path        string        `json:"path"`  // the file, or the Redis address
	RedisKey    string        `json:"redis_key,omitempty"`
	Callers     int           `json:"callers"`
	Duration    time.Duration `json:"duration"`
	CallTimeout time.Duration `json:"call_timeout"`
	Interval    time.Duration `json:"interval"` // between progress reports
	User        string        `json:"user"`
	Password    string        `json:"password"`
	// RefreshAttempts is the Source's WithRefreshAttempts.
	RefreshAttempts int `json:"refresh_attempts"`
}

// workerLine is one line a worker process writes to its stdout: that it is
// ready, then a progress snapshot each interval, then its result.
type workerLine struct {
	Ready    bool             `json:"ready,omitempty"`
	Progress *progressFigures `json:"progress,omitempty"`
	Result   *workerReport    `json:"result,omitempty"`
}

// startLine is what the demo writes to a ready worker's stdin to start its
// load: the whole fleet starts at once, when every process is ready.
const startLine = "start\n"

// progressReports is how many progress reports a worker sends per progress
// line the demo prints, so that a line shows figures at most a tenth of an
// interval old rather than up to a whole interval.
const progressReports = 10

type workerReport struct {
	Load        workerResult      `json:"load"`
	Seconds     float64           `json:"seconds"`
	Interrupted bool              `json:"interrupted"`
	Retried     int64             `json:"retried"`
	Base        tokensource.Stats `json:"base"` // after the first token, before the load
	Stats       tokensource.Stats `json:"stats"`
	LastError   string            `json:"last_error,omitempty"`
	// FailedRequests counts the Refresher calls that failed, tried again
	// or not.
	FailedRequests int `json:"failed_requests"`
}

// redisClient connects to -redis: host:port, or a unix socket path (the
// only kind with a slash).
func redisClient(addr string) *redis.Client {
	if strings.Contains(addr, "/") {
		return redis.NewClient(&redis.Options{Network: "unix", Addr: addr})
	}
	return redis.NewClient(&redis.Options{Addr: addr})
}

// openStore opens the fleet's store; release closes its connection.
func openStore(kind, path, key string) (st tokensource.Store, release func(), err error) {
	switch kind {
	case storeFile:
		return tokensource.NewFileStore(path), func() {}, nil
	case storeRedis:
		c := redisClient(path)
		return redisstore.New(c, key), func() { _ = c.Close() }, nil
	}
	return nil, nil, fmt.Errorf("unknown store %q", kind)
}

// runFleetPhase starts cfg.processes copies of this binary as worker
// processes sharing one credential through the store, after seeding the
// store with a login, and gathers what they report.
func runFleetPhase(ctx context.Context, cfg config, store string, out io.Writer) (*phaseReport, error) {
	c, err := dial(ctx, cfg, cfg.ttl)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	dir, err := os.MkdirTemp("", "tokenrefresh-demo-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	spec := workerSpec{
		Target: c.target, Insecure: cfg.insecure, CAFile: cfg.tlsCA, Store: store,
		Duration: cfg.duration, CallTimeout: cfg.callTimeout, Interval: cfg.interval / progressReports,
		User: cfg.user, Password: cfg.password, RefreshAttempts: cfg.refreshAttempts,
	}
	if c.caPEM != nil {
		spec.CAFile = filepath.Join(dir, "ca.pem")
		if err := os.WriteFile(spec.CAFile, c.caPEM, 0o600); err != nil {
			return nil, err
		}
	}
	where := ""
	switch store {
	case storeFile:
		spec.Path = filepath.Join(dir, "credential.json")
		where = "one FileStore (" + spec.Path + ")"
	case storeRedis:
		var b [8]byte
		_, _ = rand.Read(b[:])
		spec.Path, spec.RedisKey = cfg.redis, "tokenrefresh-demo:"+hex.EncodeToString(b[:])
		where = "one Redis record (" + spec.RedisKey + " on " + cfg.redis + ")"
		defer func() {
			rc := redisClient(cfg.redis)
			_ = rc.Del(context.WithoutCancel(ctx), spec.RedisKey).Err()
			_ = rc.Close()
		}()
	}
	fmt.Fprintf(out, "  %d worker processes, %d callers in all, for %v against %s:\n"+
		"  one login, then the processes share the credential through %s;\n"+
		"  one of them refreshes each token, the others adopt it\n",
		cfg.processes, cfg.workers, cfg.duration, c.target, where)

	st, closeStore, err := openStore(store, spec.Path, spec.RedisKey)
	if err != nil {
		return nil, err
	}
	err = seed(ctx, cfg, c, st)
	closeStore()
	if err != nil {
		return nil, err
	}

	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this binary to start the workers: %w", err)
	}
	ws := make([]*workerProc, cfg.processes)
	for i := range ws {
		s := spec
		s.Index = i
		s.Callers = cfg.workers / cfg.processes
		if i < cfg.workers%cfg.processes {
			s.Callers++
		}
		w, err := startWorker(ctx, self, s)
		if err != nil {
			for _, w := range ws[:i] {
				w.kill()
			}
			return nil, err
		}
		ws[i] = w
	}
	// The phase's clock starts when every process is ready: starting a
	// process, connecting and reading the fleet's token are not the load's
	// time, and a progress line must not count them.
	if err := awaitReady(ctx, ws); err != nil {
		for _, w := range ws {
			w.kill()
		}
		return nil, err
	}
	for _, w := range ws {
		w.start()
	}

	p := newProgress(out, cfg.tty, func() progressFigures {
		var f progressFigures
		for _, w := range ws {
			if g := w.progress.Load(); g != nil {
				f.OK += g.OK
				f.Failed += g.Failed
				f.Refreshes += g.Refreshes
				f.Waited += g.Waited
			}
		}
		return f
	})
	start := time.Now()
	ticker := time.NewTicker(cfg.interval)
	done := make(chan struct{})
	go func() {
		for _, w := range ws {
			<-w.done
		}
		close(done)
	}()
wait:
	for {
		select {
		case <-ticker.C:
			// The workers' loads end after cfg.duration; a line after that,
			// while they wind down and exit, would show a rate of calls
			// that were made earlier.
			if elapsed := time.Since(start); elapsed < cfg.duration+cfg.interval/2 {
				p.tick(elapsed)
			}
		case <-done:
			break wait
		}
	}
	ticker.Stop()
	p.done()

	rep := newPhaseReport("fleet-"+store, cfg.processes, cfg.workers, c.target)
	var load workerResult
	var errs []string
	for _, w := range ws {
		if w.err != nil {
			errs = append(errs, fmt.Sprintf("worker %d: %v", w.spec.Index, w.err))
			continue
		}
		r := w.result
		load.merge(&r.Load)
		rep.Seconds = max(rep.Seconds, r.Seconds)
		rep.Interrupted = rep.Interrupted || r.Interrupted
		rep.Retried += r.Retried
		rep.Waited += int64(r.Stats.Waited - r.Base.Waited)
		// Since the seed, as the generations are: a process that reached
		// the early window before its load began refreshed for the fleet.
		rep.Refreshes += int64(r.Stats.Refreshes)
		rep.Adopted += int64(r.Stats.Adopted)
		rep.RefreshFailures += int64(r.Stats.Failures)
		rep.FailedRequests += int64(r.FailedRequests)
		// The fleet has one token: its lifetimes are the generations of
		// the process that installed the most (one whose callers stopped
		// just before the last adoption saw one fewer).
		rep.Lifetimes = max(rep.Lifetimes, int(r.Stats.Generation-1))
		if r.LastError != "" {
			rep.Errors = append(rep.Errors, fmt.Sprintf("worker %d: last refresh error: %s", w.spec.Index, r.LastError))
		}
	}
	if len(errs) > 0 {
		if ctx.Err() == nil {
			return nil, errors.New(strings.Join(errs, "; "))
		}
		// Interrupted (Ctrl-C): a worker stopped before it could report.
		// The phase reports what the others did, as interrupted.
		rep.Errors = append(rep.Errors, errs...)
	}
	elapsed := time.Duration(rep.Seconds * float64(time.Second))
	interrupted := rep.Interrupted || ctx.Err() != nil
	rep.setLoad(&load, elapsed, interrupted)
	// The server's figures include the seed's login: the one login the
	// phase announces, which the fleet then shares.
	rep.Server = c.serverFigures()
	return rep, nil
}

// seed logs in once and saves the token in the fleet's store, as a
// deployment tool would before starting the replicas.
func seed(ctx context.Context, cfg config, c *conn, st tokensource.Store) error {
	cc, err := grpc.NewClient(c.target, grpc.WithTransportCredentials(c.creds))
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.callTimeout)
	defer cancel()
	tok, err := testserver.NewRefresher(cc, cfg.user, cfg.password).Refresh(ctx, nil)
	if err != nil {
		return fmt.Errorf("logging in: %w", err)
	}
	if err := st.Save(ctx, tok); err != nil {
		return fmt.Errorf("saving the login in the store: %w", err)
	}
	return nil
}

// awaitReady waits until every worker is ready to start its load. A worker
// that exits first fails the phase. If ctx ends first (Ctrl-C), the workers
// have been told to stop too and report an interrupted load, so awaitReady
// returns nil and the phase ends as interrupted.
func awaitReady(ctx context.Context, ws []*workerProc) error {
	for _, w := range ws {
		select {
		case <-w.ready:
		case <-w.done:
			if ctx.Err() != nil {
				return nil // stopped by Ctrl-C while starting up
			}
			err := w.err
			if err == nil {
				err = errors.New("exited before it was ready")
			}
			return fmt.Errorf("worker %d: %w", w.spec.Index, err)
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

// workerProc is a running worker process, as the demo sees it.
type workerProc struct {
	spec     workerSpec
	cmd      *exec.Cmd
	stdin    io.WriteCloser // startLine goes here
	stderr   bytes.Buffer
	ready    chan struct{} // closed when the worker reports that it is ready
	progress atomic.Pointer[progressFigures]
	result   *workerReport
	err      error
	done     chan struct{} // closed once the process has exited and result or err is set
}

func startWorker(ctx context.Context, self string, spec workerSpec) (*workerProc, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	w := &workerProc{spec: spec, ready: make(chan struct{}), done: make(chan struct{})}
	w.cmd = exec.CommandContext(ctx, self)
	w.cmd.Env = append(os.Environ(), envWorker+"="+string(b))
	w.cmd.Stderr = &w.stderr
	// Ctrl-C (ctx cancelled) asks the workers to stop their load and
	// report, as it does the demo; a worker that does not exit is killed.
	w.cmd.Cancel = func() error { return w.cmd.Process.Signal(syscall.SIGTERM) }
	w.cmd.WaitDelay = 10 * time.Second
	stdout, err := w.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if w.stdin, err = w.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := w.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting worker %d: %w", spec.Index, err)
	}
	go func() {
		defer close(w.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
		for sc.Scan() {
			var l workerLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				continue // not ours: a stray line does not end the run
			}
			if l.Ready && !isClosed(w.ready) {
				close(w.ready)
			}
			if l.Progress != nil {
				w.progress.Store(l.Progress)
			}
			if l.Result != nil {
				w.result = l.Result
			}
		}
		err := w.cmd.Wait()
		switch {
		case err != nil && w.result != nil && ctx.Err() != nil:
			// Told to stop (Ctrl-C), the worker reported its interrupted
			// load; Wait reports the cancellation, which is no failure.
		case err != nil:
			w.err = fmt.Errorf("%w; stderr: %s", err, strings.TrimSpace(w.stderr.String()))
		case w.result == nil:
			w.err = fmt.Errorf("exited without a result; stderr: %s", strings.TrimSpace(w.stderr.String()))
		}
	}()
	return w, nil
}

// start tells a ready worker to start its load. A worker that has exited
// meanwhile is reported by its done channel, not here.
func (w *workerProc) start() {
	_, _ = io.WriteString(w.stdin, startLine)
	_ = w.stdin.Close()
}

func (w *workerProc) kill() {
	_ = w.cmd.Process.Kill()
	<-w.done
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// runWorker is the body of a worker process: a replica of one service with
// its own connection and Source, sharing the fleet's credential through the
// store. Once it holds the fleet's token it says so on stdout and waits for
// startLine on stdin before it starts its load. It writes workerLines to
// stdout and returns the exit status.
func runWorker(specJSON string, stdin io.Reader, stdout, stderr io.Writer) int {
	var spec workerSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(stderr, "demo worker: bad", envWorker+":", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := work(ctx, spec, stdin, stdout); err != nil {
		fmt.Fprintf(stderr, "demo worker %d: %v\n", spec.Index, err)
		return exitFail
	}
	return exitPass
}

func work(ctx context.Context, spec workerSpec, stdin io.Reader, stdout io.Writer) error {
	var mu sync.Mutex
	enc := json.NewEncoder(stdout)
	write := func(l workerLine) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(l)
	}
	creds, iopts, err := transportCreds(spec.Insecure, spec.CAFile)
	if err != nil {
		return err
	}
	st, closeStore, err := openStore(spec.Store, spec.Path, spec.RedisKey)
	if err != nil {
		return err
	}
	defer closeStore()

	// The first token comes from the store, before the load.
	tracker := &tokenTracker{}
	cl, err := newClient(ctx, spec.Target, creds, spec.User, spec.Password, spec.CallTimeout, iopts,
		tokensource.WithStore(st), tokensource.WithObserver(tracker.observe),
		tokensource.WithRefreshAttempts(spec.RefreshAttempts))
	if err != nil {
		return err
	}
	defer cl.close()
	write(workerLine{Ready: true})
	if err := awaitStart(ctx, stdin); err != nil {
		return err
	}
	var total counters
	res, elapsed, interrupted := runLoad(ctx, spec.Callers, spec.Duration, spec.CallTimeout, spec.Interval, nil,
		echov1.NewEchoServiceClient(cl.cc), &total, func(time.Duration) {
			f := cl.figures(&total)
			write(workerLine{Progress: &f})
		})
	t := tracker.summary(time.Now())
	rep := &workerReport{Load: res, Seconds: elapsed.Seconds(), Interrupted: interrupted,
		Retried: cl.retried.Load(), Base: cl.base, Stats: cl.src.Stats(),
		LastError: t.lastFailure, FailedRequests: t.failedCalls}
	write(workerLine{Result: rep})
	return nil
}

// awaitStart waits for startLine on stdin. If ctx ends first (the demo was
// interrupted) it returns nil, and the load that follows ends at once as
// interrupted, so the demo still gets a result.
func awaitStart(ctx context.Context, stdin io.Reader) error {
	started := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		switch {
		case line == startLine:
			started <- nil
		case err != nil:
			started <- fmt.Errorf("waiting for the start: the demo closed stdin: %w", err)
		default:
			started <- fmt.Errorf("waiting for the start: unexpected line %q on stdin", line)
		}
	}()
	select {
	case err := <-started:
		return err
	case <-ctx.Done():
		return nil
	}
}

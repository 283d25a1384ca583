// Package redistest starts real redis-server processes for tests: private
// processes without persistence, listening on a unix socket in a temporary
// directory (Start) and, for the topologies that need TCP between servers,
// on a loopback port as well (StartTCP): a master with replicas
// (StartReplicated), a Redis Cluster (StartCluster) and Sentinel
// (StartSentinel). Every process is killed when the test that started it
// ends (t.Cleanup), so no test leaks one. The package talks to the servers
// in raw RESP (Server.Do) and depends on no Redis client library. It is used
// by the tests of tokensource/redisstore, the fleet tests and the fault
// campaign; it is not part of the API.
//
// Faults for tests and the fault campaign: Server.Kill (SIGKILL) and
// Restart (empty unless persistence is asked for, as with "--appendonly",
// "yes"), Pause and Resume (SIGSTOP, SIGCONT), RestartReplicaOf; a Link
// between a replica and its master delays, holds or cuts the replication
// stream (a lagging replica that really misses writes); Cluster.KillMasterFor
// and Sentinel.Failover kill a master and wait for its replacement, and
// report how long that took. Clients reach the servers by Server.Socket or
// Server.Addr (Cluster.Addrs, Sentinel.Addrs for seed lists), also from
// other processes. Everything listens on loopback or unix sockets only.
// Server state offers nothing to wait on, so the helpers poll it (WaitFor).
//
// A machine without redis-server skips the tests that need one, except in CI
// (the environment variable CI is "true"), where a missing redis-server fails
// them: CI must never pass by skipping. Debian's redis-server package
// provides the binary; Sentinel runs as "redis-server FILE --sentinel", so
// the redis-sentinel package is not needed.
package redistest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds how long Start and Restart wait for the server to answer
// PING. Generous, because CI machines are loaded; a healthy server on an idle
// machine answers within a few milliseconds.
const startTimeout = 30 * time.Second

// Binary returns the path of redis-server. When it is not on PATH it skips
// the test, or fails it when the environment variable CI is "true".
func Binary(tb testing.TB) string {
	tb.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("redistest: redis-server is not on PATH (CI=true, so this fails instead of skipping; .ci/run installs it): %v", err)
		}
		tb.Skipf("redistest: redis-server is not on PATH (install the redis-server package; CI fails here instead of skipping): %v", err)
	}
	return path
}

// Server is a redis-server process owned by one test. Its methods may be
// called from any goroutine.
type Server struct {
	// Socket is the path of the server's unix socket (network "unix"). It
	// stays the same across Restart, so clients and worker processes can
	// keep using it. It is "" for a Sentinel, which listens on Addr only.
	Socket string
	// Addr is the server's loopback TCP address ("127.0.0.1:port") for a
	// server started by StartTCP or by a topology, and "" for one started
	// by Start. It stays the same across Restart.
	Addr string
	// Password is the value of a "--requirepass" argument given to Start,
	// or "" when the server accepts every client.
	Password string

	tb   testing.TB
	bin  string
	dir  string
	argv []string // the command line after the binary

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	out    *lockedWriter
}

// Start starts a redis-server on a unix socket only and waits until it
// answers PING. args are extra configuration arguments ("--requirepass",
// "secret", say); they come after the defaults and so override them. The
// server is stopped when the test ends.
func Start(tb testing.TB, args ...string) *Server {
	tb.Helper()
	s := newServer(tb, "", args)
	s.Restart()
	return s
}

// StartTCP is Start with a loopback TCP port as well (Server.Addr), which
// replication, Cluster and Sentinel need: they connect servers by host and
// port. The port is picked free; if another process takes it before the
// server binds it, StartTCP tries another.
func StartTCP(tb testing.TB, args ...string) *Server {
	tb.Helper()
	return startTCP(tb, func(port int) []string { return args })
}

// startTCP starts a server on a free port, with args(port) after the TCP
// defaults; it retries with other ports when the server cannot bind.
func startTCP(tb testing.TB, args func(port int) []string) *Server {
	tb.Helper()
	var last error
	for range 5 {
		port := freePort(tb)
		s := newServer(tb, "", append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1"}, args(port)...))
		s.Addr = "127.0.0.1:" + strconv.Itoa(port)
		if last = s.start(); last == nil {
			return s
		}
	}
	tb.Fatalf("redistest: %v", last)
	return nil
}

// newServer prepares a server in a directory of its own, removed (after the
// process is killed) when the test ends. conf, when not "", is the text of a
// configuration file that comes first on the command line; a Sentinel needs
// one, since it rewrites it.
func newServer(tb testing.TB, conf string, args []string) *Server {
	tb.Helper()
	bin := Binary(tb)
	// Not tb.TempDir: a unix socket path is limited to about 104 bytes,
	// which long test names under TMPDIR exceed.
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	s := &Server{tb: tb, bin: bin, dir: dir}
	tb.Cleanup(func() {
		s.Stop()
		_ = os.RemoveAll(dir)
	})
	if conf != "" {
		path := filepath.Join(dir, "redis.conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			tb.Fatalf("redistest: %v", err)
		}
		s.argv = append([]string{path}, args...)
		return s
	}
	s.Socket = filepath.Join(dir, "redis.sock")
	s.argv = append([]string{
		"--port", "0",
		"--unixsocket", s.Socket,
		"--unixsocketperm", "700",
		"--dir", dir,
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--protected-mode", "no",
		// Replicas sync at once instead of waiting 5 s for more of them.
		"--repl-diskless-sync-delay", "0",
	}, args...)
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--requirepass" {
			s.Password = args[i+1]
		}
	}
	return s
}

// Dir is the server's scratch directory: its working directory, where a
// configuration file, nodes.conf or an append-only file lives.
func (s *Server) Dir() string { return s.dir }

// Stop kills the server (SIGKILL, as a crash would) and waits for it to
// exit. It is idempotent; Restart starts it again on the same socket and
// port. A paused server is killed as well.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// Kill is Stop, named for what fault tests do with it.
func (s *Server) Kill() { s.Stop() }

// Pause stops the process with SIGSTOP, as a stalled host or a long pause
// would: its connections stay open and nothing answers. Resume continues
// it; Stop kills it either way.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}

// Running reports whether the process runs (it may be paused).
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// Restart starts the server (again) on the same socket and port, stopping it
// first if it runs, and waits until it answers PING. Without persistence
// arguments the new server starts empty.
func (s *Server) Restart() {
	s.tb.Helper()
	if err := s.start(); err != nil {
		s.tb.Fatalf("redistest: %v", err)
	}
}

// RestartReplicaOf restarts the server as a replica of master (which needs
// an Addr) and waits until its first sync is done: how a killed master
// rejoins a Sentinel deployment at once, instead of running as an empty
// master until the Sentinels notice it (up to 10 s) and reconfigure it. The
// next Restart starts it as configured at first.
func (s *Server) RestartReplicaOf(master *Server) {
	s.tb.Helper()
	host, port, _ := strings.Cut(master.Addr, ":")
	if err := s.start("--replicaof", host, port); err != nil {
		s.tb.Fatalf("redistest: %v", err)
	}
	waitSynced(s.tb, s)
}

func (s *Server) start(extra ...string) error {
	s.Stop()
	cmd := exec.Command(s.bin, append(append([]string(nil), s.argv...), extra...)...)
	cmd.Dir = s.dir
	// The output is kept for the failure message only.
	out := &lockedWriter{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited, s.out = cmd, exited, out
	s.mu.Unlock()

	if err := s.waitReady(exited); err != nil {
		s.Stop()
		return fmt.Errorf("redis-server did not become ready: %w\n%s", err, out.String())
	}
	return nil
}

// Output returns what the current process wrote to stdout and stderr, for
// failure messages.
func (s *Server) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out == nil {
		return ""
	}
	return s.out.String()
}

// waitReady polls PING until it succeeds, the process exits or startTimeout
// passes. Polling is the only readiness signal redis-server offers without
// parsing its log.
func (s *Server) waitReady(exited <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	var last error
	for time.Now().Before(deadline) {
		last = s.ping()
		if last == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("the process exited")
		case <-time.After(10 * time.Millisecond):
		}
	}
	return fmt.Errorf("no PING answer within %v: %v", startTimeout, last)
}

// ping sends one PING. PONG means ready; so does a refusal for want of a
// password (NOAUTH, WRONGPASS), since only a running server refuses. Any
// other error reply (LOADING while the server reads its data) means not yet.
func (s *Server) ping() error {
	v, err := s.do(time.Second, "PING")
	var rerr Error
	switch {
	case err == nil && v == "PONG":
		return nil
	case errors.As(err, &rerr) && (rerr.HasPrefix("NOAUTH") || rerr.HasPrefix("WRONGPASS")):
		return nil
	case err != nil:
		return err
	}
	return fmt.Errorf("PING answered %v", v)
}

// freePort returns a loopback TCP port that was free a moment ago, and whose
// Cluster bus port (port+10000) is valid.
func freePort(tb testing.TB) int {
	tb.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("redistest: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if port+10000 <= 65535 {
			return port
		}
	}
	tb.Fatal("redistest: no free loopback port below 55536")
	return 0
}

// lockedWriter serialises the writes of the process's two output streams.
type lockedWriter struct {
	mu sync.Mutex
	w  bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

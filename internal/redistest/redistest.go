// Package redistest starts a real redis-server for tests: a private process
// listening only on a unix socket in a temporary directory, without
// persistence, stopped when the test ends. It is used by the tests of
// tokensource/redisstore and by the fleet tests; it is not part of the API.
//
// A machine without redis-server skips the tests that need one, except in CI
// (the environment variable CI is "true"), where a missing redis-server fails
// them: CI must never pass by skipping.
package redistest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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
	// keep using it.
	Socket string
	// Password is the value of a "--requirepass" argument given to Start,
	// or "" when the server accepts every client.
	Password string

	tb   testing.TB
	bin  string
	dir  string
	args []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
}

// Start starts a redis-server and waits until it answers PING. args are
// extra configuration arguments ("--requirepass", "secret", say); they come
// after the defaults and so override them. The server is stopped when the
// test ends.
func Start(tb testing.TB, args ...string) *Server {
	tb.Helper()
	bin := Binary(tb)
	// Not tb.TempDir: a unix socket path is limited to about 104 bytes,
	// which long test names under TMPDIR exceed.
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	s := &Server{
		Socket: filepath.Join(dir, "redis.sock"),
		tb:     tb,
		bin:    bin,
		dir:    dir,
		args:   append([]string(nil), args...),
	}
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--requirepass" {
			s.Password = args[i+1]
		}
	}
	tb.Cleanup(func() {
		s.Stop()
		_ = os.RemoveAll(dir)
	})
	s.Restart()
	return s
}

// Stop kills the server and waits for it to exit. It is idempotent; Restart
// starts it again on the same socket.
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

// Restart starts the server (again) on the same socket, stopping it first if
// it runs, and waits until it answers PING. Without persistence arguments
// the new server starts empty.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	args := append([]string{
		"--port", "0",
		"--unixsocket", s.Socket,
		"--unixsocketperm", "700",
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--protected-mode", "no",
	}, s.args...)
	cmd := exec.Command(s.bin, args...)
	// The output is kept for the failure message only.
	out := &lockedWriter{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		s.tb.Fatalf("redistest: starting redis-server: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()

	if err := s.waitReady(exited); err != nil {
		s.Stop()
		s.tb.Fatalf("redistest: redis-server did not become ready: %v\n%s", err, out.String())
	}
}

// waitReady polls PING until it succeeds, the process exits or startTimeout
// passes. Polling is the only readiness signal redis-server offers without
// parsing its log.
func (s *Server) waitReady(exited <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	var last error
	for time.Now().Before(deadline) {
		last = ping(s.Socket)
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

// ping sends one PING in RESP, Redis's wire format, and reads the one-line
// answer. +PONG means ready; so does a refusal for want of a password
// (NOAUTH, WRONGPASS), since only a running server refuses. Any other error
// reply (LOADING while the server reads its data) means not yet.
func ping(socket string) error {
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case line == "+PONG", strings.HasPrefix(line, "-NOAUTH"), strings.HasPrefix(line, "-WRONGPASS"):
		return nil
	}
	return fmt.Errorf("PING answered %q", line)
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

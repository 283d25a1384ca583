package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/testutil"
	authv1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/auth/v1"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
)

// runMainEnv makes the test binary run the program's main instead of the
// tests, so that the tests can start it as a real process and signal it.
const runMainEnv = "TESTSERVER_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	testutil.Main(m, testutil.Role(runMainEnv, func(string) int {
		main()
		return 0
	}))
}

// syncBuffer collects the log output run writes from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// parseStartLine returns the address of the program's start line,
// "listening on ADDR (...)".
func parseStartLine(t *testing.T, line string) string {
	t.Helper()
	rest, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
	if !ok || rest == "" {
		t.Fatalf("first line %q does not announce the address", line)
	}
	return strings.Fields(rest)[0]
}

// startRun runs the program in-process with args and returns the address it
// prints. The program is stopped, and must return nil, when the test ends.
func startRun(t *testing.T, args ...string) (addr string, logs *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	logs = &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		err := run(ctx, args, pw, logs)
		pw.CloseWithError(errors.New("run returned"))
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run returned %v after cancel, want nil", err)
			}
		case <-time.After(10 * time.Second): // a hang, not a timing assertion
			t.Error("run did not return after its context was cancelled")
		}
		if !strings.Contains(logs.String(), "stopped") {
			t.Errorf("logs do not record the graceful stop:\n%s", logs)
		}
	})

	stdout := bufio.NewReader(pr)
	line, err := stdout.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the listening line: %v (logs:\n%s)", err, logs)
	}
	// Nothing else may follow on stdout; drain it so run never blocks.
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return parseStartLine(t, line), logs
}

func dial(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// listServices asks the server reflection service (v1) for the service names.
func listServices(t *testing.T, conn *grpc.ClientConn) []string {
	t.Helper()
	stream, err := reflectionv1.NewServerReflectionClient(conn).ServerReflectionInfo(t.Context())
	if err != nil {
		t.Fatalf("ServerReflectionInfo: %v", err)
	}
	req := &reflectionv1.ServerReflectionRequest{
		MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{ListServices: "*"},
	}
	if err := stream.Send(req); err != nil {
		t.Fatalf("Send: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("final Recv = %v, want io.EOF", err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	return names
}

func wantServices(t *testing.T, names []string) {
	t.Helper()
	for _, want := range []string{authv1.AuthService_ServiceDesc.ServiceName, echov1.EchoService_ServiceDesc.ServiceName} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
}

func TestRunServesWithReflection(t *testing.T) {
	before := time.Now()
	addr, _ := startRun(t, "-addr", "127.0.0.1:0", "-user", "ann", "-password", "pw",
		"-access-ttl", "5m", "-fail-refreshes", "1", "-fail-code", "RESOURCE_EXHAUSTED")
	conn := dial(t, addr, insecure.NewCredentials())
	wantServices(t, listServices(t, conn))

	auth := authv1.NewAuthServiceClient(conn)
	if _, err := auth.Login(t.Context(), &authv1.LoginRequest{User: "demo", Password: "demo-password"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Login as the default user = %v, want Unauthenticated (-user replaces it)", err)
	}
	resp, err := auth.Login(t.Context(), &authv1.LoginRequest{User: "ann", Password: "pw"})
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	tok := resp.GetToken()
	exp := tok.GetExpireTime().AsTime()
	if exp.Before(before.Add(5*time.Minute)) || exp.After(time.Now().Add(5*time.Minute)) {
		t.Errorf("expire_time %v is not 5m after the login", exp)
	}
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+tok.GetAccessToken())
	if e, err := echov1.NewEchoServiceClient(conn).Echo(ctx, &echov1.EchoRequest{Message: "hi"}); err != nil || e.GetUser() != "ann" {
		t.Errorf("Echo = %v, %v; want ann's echo", e, err)
	}
	_, err = auth.Refresh(t.Context(), &authv1.RefreshRequest{RefreshToken: tok.GetRefreshToken()})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("first Refresh = %v, want the injected ResourceExhausted", err)
	}
	if _, err := auth.Refresh(t.Context(), &authv1.RefreshRequest{RefreshToken: tok.GetRefreshToken()}); err != nil {
		t.Errorf("second Refresh: %v", err)
	}
}

func TestRunTLS(t *testing.T) {
	certFile := filepath.Join(t.TempDir(), "cert.pem")
	addr, _ := startRun(t, "-addr", "127.0.0.1:0", "-tls", "-tls-cert-out", certFile)
	pemBytes, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatalf("the certificate file is not there once the address is printed: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatal("the certificate file holds no PEM certificate")
	}
	conn := dial(t, addr, credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	wantServices(t, listServices(t, conn))
}

func TestRunFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-no-such-flag"},
		{"-fail-code", "NOT_A_CODE"},
		{"-fail-code", "17"},
		{"-tls-cert-out", "x.pem"},
		{"-access-ttl", "0s"},
		{"-fail-refreshes", "-1"},
		{"-user", ""},
		{"-log-level", "loud"},
		{"extra"},
	} {
		var stderr bytes.Buffer
		err := run(t.Context(), args, io.Discard, &stderr)
		if !errors.Is(err, errUsage) {
			t.Errorf("run(%q) = %v, want a usage error", args, err)
		}
		if !strings.Contains(stderr.String(), "Usage") {
			t.Errorf("run(%q) printed no usage:\n%s", args, stderr.String())
		}
	}
	if err := run(t.Context(), []string{"-h"}, io.Discard, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("run(-h) = %v, want flag.ErrHelp", err)
	}
}

func TestRunAddressInUse(t *testing.T) {
	addr, _ := startRun(t, "-addr", "127.0.0.1:0")
	err := run(t.Context(), []string{"-addr", addr}, io.Discard, io.Discard)
	if err == nil || errors.Is(err, errUsage) {
		t.Errorf("run on a busy address = %v, want a listen error", err)
	}
}

func TestParseCode(t *testing.T) {
	for in, want := range map[string]codes.Code{
		"UNAVAILABLE":       codes.Unavailable,
		"unavailable":       codes.Unavailable,
		"DeadlineExceeded":  codes.DeadlineExceeded,
		"DEADLINE_EXCEEDED": codes.DeadlineExceeded,
		"16":                codes.Unauthenticated,
		"0":                 codes.OK,
	} {
		if got, err := parseCode(in); err != nil || got != want {
			t.Errorf("parseCode(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "17", "-1", "nope"} {
		if _, err := parseCode(in); err == nil {
			t.Errorf("parseCode(%q) succeeded, want an error", in)
		}
	}
}

// TestRunStartLine: the program announces itself once, on one stdout line
// that says what a client needs, and the address appears nowhere else at
// start.
func TestRunStartLine(t *testing.T) {
	certFile := filepath.Join(t.TempDir(), "cert.pem")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	pr, pw := io.Pipe()
	var stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		err := run(ctx, []string{"-addr", "127.0.0.1:0", "-tls", "-tls-cert-out", certFile,
			"-access-ttl", "10s", "-fail-refreshes", "2"}, pw, &stderr)
		pw.Close()
		done <- err
	}()
	stdout := bufio.NewReader(pr)
	line, err := stdout.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the start line: %v (stderr:\n%s)", err, stderr.String())
	}
	startErr := stderr.String()
	cancel()
	rest, _ := io.ReadAll(stdout) // until run returns
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if len(rest) > 0 {
		t.Errorf("stdout has more than the start line: %q", rest)
	}
	addr := parseStartLine(t, line)
	for _, want := range []string{"TLS, certificate in " + certFile, "user demo", "access tokens 10s", "first 2 refreshes fail with Unavailable"} {
		if !strings.Contains(line, want) {
			t.Errorf("start line %q does not say %q", line, want)
		}
	}
	if strings.Contains(startErr, addr) {
		t.Errorf("the address is also logged at start:\n%s", startErr)
	}
}

// TestRunLogsRejectedTokens: at the default log level the program logs each
// rejected token with the method and the reason, never the token.
func TestRunLogsRejectedTokens(t *testing.T) {
	addr, logs := startRun(t, "-addr", "127.0.0.1:0")
	conn := dial(t, addr, insecure.NewCredentials())
	const secret = "at_NOTISSUEDSECRET"
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+secret)
	_, err := echov1.NewEchoServiceClient(conn).Echo(ctx, &echov1.EchoRequest{Message: "x"})
	if status.Code(err) != codes.Unauthenticated || !strings.HasPrefix(status.Convert(err).Message(), "testserver: ") {
		t.Fatalf("Echo with an unknown token: %v, want Unauthenticated \"testserver: ...\"", err)
	}
	// No header at all: the wording is the server's, not go-grpc-middleware's.
	_, err = echov1.NewEchoServiceClient(conn).Echo(t.Context(), &echov1.EchoRequest{Message: "x"})
	if status.Code(err) != codes.Unauthenticated || !strings.HasPrefix(status.Convert(err).Message(), "testserver: ") {
		t.Fatalf("Echo without a token: %v, want Unauthenticated \"testserver: ...\"", err)
	}
	text := logs.String()
	for _, want := range []string{
		`level=INFO msg="access token rejected" method=/tokenrefresh.echo.v1.EchoService/Echo reason="unknown token"`,
		`level=INFO msg="access token rejected" method=/tokenrefresh.echo.v1.EchoService/Echo reason="no authorization header`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("logs lack %s:\n%s", want, text)
		}
	}
	if strings.Contains(text, secret) {
		t.Errorf("the token appears in the logs:\n%s", text)
	}
}

// startProcess starts cmd, whose stdout is the program's, and returns the
// address of its start line. The process is killed if the test ends before
// it exits.
func startProcess(t *testing.T, cmd *exec.Cmd) (addr string, stderr *syncBuffer) {
	t.Helper()
	stderr = &syncBuffer{}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the start line: %v (stderr:\n%s)", err, stderr)
	}
	return parseStartLine(t, line), stderr
}

// serves checks that a client can log in at addr.
func serves(t *testing.T, addr string) {
	t.Helper()
	conn := dial(t, addr, insecure.NewCredentials())
	_, err := authv1.NewAuthServiceClient(conn).Login(t.Context(), &authv1.LoginRequest{User: "demo", Password: "demo-password"})
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	_ = conn.Close()
}

// portFree checks that nothing listens on addr any more.
func portFree(t *testing.T, addr string) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the port is still held after the program exited: %v", err)
	}
	_ = lis.Close()
}

// TestProcessStopsOnSignal runs the program as a real process (this test
// binary, re-executed) and checks that SIGINT and SIGTERM each stop it
// gracefully: exit status 0, the stop logged, the port released.
func TestProcessStopsOnSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-addr", "127.0.0.1:0")
			cmd.Env = append(os.Environ(), runMainEnv+"=1")
			addr, stderr := startProcess(t, cmd)
			serves(t, addr)
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("after %v the program exited with %v, want status 0 (stderr:\n%s)", sig, err, stderr)
			}
			if !strings.Contains(stderr.String(), "msg=stopped") {
				t.Errorf("stderr does not record the graceful stop:\n%s", stderr)
			}
			portFree(t, addr)
		})
	}
}

// TestMakeTestserverForwardsSignals runs `make testserver` as a user does and
// checks that the server stops when make is sent SIGTERM (make passes it to
// its child) and when the terminal's Ctrl-C sends SIGINT to the whole process
// group: with `go run` in between, the server survived and kept its port.
func TestMakeTestserverForwardsSignals(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the program with make")
	}
	makeBin, err := exec.LookPath("make")
	if err != nil {
		t.Skip("make is not installed")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go is not on PATH")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "testserver")
	for _, tc := range []struct {
		name  string
		group bool // signal the process group, as a terminal does
		sig   syscall.Signal
	}{
		{"SIGTERM to make", false, syscall.SIGTERM},
		{"SIGINT to the process group", true, syscall.SIGINT},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(makeBin, "-s", "-C", root, "testserver",
				"GO="+goBin, "TESTSERVER_BIN="+bin, "TESTSERVER_FLAGS=-addr 127.0.0.1:0")
			// Not the jobserver or flags of a make that runs these tests.
			cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
				return strings.HasPrefix(kv, "MAKEFLAGS=") || strings.HasPrefix(kv, "MFLAGS=") || strings.HasPrefix(kv, "MAKELEVEL=")
			})
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			addr, stderr := startProcess(t, cmd)
			serves(t, addr)
			pid := cmd.Process.Pid
			if tc.group {
				pid = -pid
			}
			if err := syscall.Kill(pid, tc.sig); err != nil {
				t.Fatal(err)
			}
			// make reports the signal in its own exit status; what counts
			// is that the server stopped gracefully and freed its port.
			_ = cmd.Wait()
			if !strings.Contains(stderr.String(), "msg=stopped") {
				t.Errorf("the server did not stop gracefully; stderr:\n%s", stderr)
			}
			portFree(t, addr)
			// No process of the group is left (the server included).
			if err := syscall.Kill(-cmd.Process.Pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("a process of make's group is still running (kill 0: %v)", err)
			}
		})
	}
}

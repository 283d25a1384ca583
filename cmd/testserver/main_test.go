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
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	authv1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/auth/v1"
	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
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

	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the listening line: %v (logs:\n%s)", err, logs)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
	if !ok {
		t.Fatalf("first line %q does not announce the address", line)
	}
	return addr, logs
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

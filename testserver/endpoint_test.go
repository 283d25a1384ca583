package testserver_test

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
)

func TestTLSEndpoint(t *testing.T) {
	srv := testserver.New()
	ep, c := start(t, srv, testserver.TLS())
	if err := echo(t.Context(), c, mustIssue(t, srv)); err != nil {
		t.Fatalf("Echo over TLS: %v", err)
	}
	if got := ep.ClientCredentials().Info().SecurityProtocol; got != "tls" {
		t.Errorf("ClientCredentials().Info().SecurityProtocol = %q, want tls", got)
	}

	block, _ := pem.Decode(ep.CertificatePEM())
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatal("CertificatePEM is not a PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	for _, name := range []string{"localhost", "127.0.0.1"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: name}); err != nil {
			t.Errorf("certificate does not verify for %s: %v", name, err)
		}
	}

	// A plaintext client cannot talk to the TLS endpoint.
	plain, err := grpc.NewClient(ep.Target(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	_, err = echov1.NewEchoServiceClient(plain).Echo(t.Context(), &echov1.EchoRequest{})
	wantCode(t, "plaintext client on the TLS endpoint", err, codes.Unavailable)
}

func TestPlaintextEndpoint(t *testing.T) {
	srv := testserver.New()
	ep, c := start(t, srv, testserver.Address("127.0.0.1:0"))
	if err := echo(t.Context(), c, mustIssue(t, srv)); err != nil {
		t.Fatalf("Echo: %v", err)
	}
	if ep.CertificatePEM() != nil {
		t.Error("CertificatePEM of a plaintext endpoint is not nil")
	}
	if got := ep.ClientCredentials().Info().SecurityProtocol; got != "insecure" {
		t.Errorf("ClientCredentials().Info().SecurityProtocol = %q, want insecure", got)
	}
	if ep.Addr() != ep.Target() {
		t.Errorf("TCP endpoint Addr %q != Target %q", ep.Addr(), ep.Target())
	}
}

func TestStartFailsOnBadAddress(t *testing.T) {
	srv := testserver.New()
	ep, err := srv.Start(t.Context(), testserver.Address("256.0.0.1:bad"))
	if err == nil {
		ep.Stop()
		t.Fatal("Start on a bad address succeeded")
	}
}

// TestStopEndsOpenStreams stops an endpoint while a stream is open: Stop
// returns after the stop timeout, the stream ends with an error, and goleak
// (in TestMain) finds no goroutine left behind.
func TestStopEndsOpenStreams(t *testing.T) {
	srv := testserver.New()
	ep, err := srv.Start(t.Context(), testserver.Bufconn(), testserver.StopTimeout(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := ep.NewClient()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, err := echov1.NewEchoServiceClient(conn).BidiStreamEcho(bearer(t.Context(), mustIssue(t, srv)))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&echov1.BidiStreamEchoRequest{Message: "open"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	for range 3 { // Stop is idempotent and safe to call concurrently
		wg.Go(ep.Stop)
	}
	wg.Wait()
	select {
	case <-ep.Done():
	default:
		t.Error("Stop returned before Serve did")
	}
	if _, err := s.Recv(); err == nil || errors.Is(err, io.EOF) {
		t.Errorf("Recv on a stream the stopped server closed = %v, want an error", err)
	}
	if err := ep.Err(); err != nil {
		t.Errorf("Err after Stop = %v, want nil", err)
	}
}

func mustIssue(t *testing.T, srv *testserver.Server) string {
	t.Helper()
	tok, err := srv.IssueToken("tester")
	if err != nil {
		t.Fatal(err)
	}
	return tok.AccessToken
}

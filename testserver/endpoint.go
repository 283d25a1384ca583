package testserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/test/bufconn"
)

// Endpoint is a Server being served by a grpc.Server on one listener. Stop
// it when done; until then its accessors are safe for concurrent use.
type Endpoint struct {
	gs          *grpc.Server
	lis         net.Listener
	buf         *bufconn.Listener // nil unless Bufconn
	target      string
	clientCreds credentials.TransportCredentials
	certPEM     []byte
	stopTimeout time.Duration

	serveDone chan struct{}
	serveErr  error // written before serveDone is closed
	stopOnce  sync.Once
}

// Start serves s on a new listener (loopback TCP on an ephemeral port unless
// opts say otherwise) and returns once the listener accepts connections. ctx
// bounds only the setup; the endpoint serves until Stop. Start fails when the
// address cannot be listened on or the certificate cannot be made.
func (s *Server) Start(ctx context.Context, opts ...StartOption) (*Endpoint, error) {
	o := defaultStartOptions()
	for _, opt := range opts {
		opt(&o)
	}
	ep := &Endpoint{
		clientCreds: insecure.NewCredentials(),
		stopTimeout: o.stopTimeout,
		serveDone:   make(chan struct{}),
	}
	serverCreds := insecure.NewCredentials()
	if o.tls {
		cert, certPEM, err := selfSignedCertificate(time.Now())
		if err != nil {
			return nil, fmt.Errorf("testserver: making the TLS certificate: %w", err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(cert.Leaf)
		serverCreds = credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
		})
		ep.clientCreds = credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
		ep.certPEM = certPEM
	}

	if o.bufconn {
		ep.buf = bufconn.Listen(o.bufSize)
		ep.lis = ep.buf
		// The authority "localhost" is a name the TLS certificate covers.
		ep.target = "passthrough:///localhost"
	} else {
		var lc net.ListenConfig
		lis, err := lc.Listen(ctx, "tcp", o.addr)
		if err != nil {
			return nil, fmt.Errorf("testserver: listening on %s: %w", o.addr, err)
		}
		ep.lis = lis
		ep.target = lis.Addr().String()
	}

	sopts := append(s.ServerOptions(), grpc.Creds(serverCreds))
	ep.gs = grpc.NewServer(append(sopts, o.serverOpts...)...)
	s.Register(ep.gs)
	if o.reflection {
		reflection.Register(ep.gs)
	}
	go func() {
		defer close(ep.serveDone)
		ep.serveErr = ep.gs.Serve(ep.lis)
	}()
	return ep, nil
}

// Target is the name to pass to grpc.NewClient, together with DialOptions:
// "127.0.0.1:port" for TCP, "passthrough:///localhost" for Bufconn.
func (ep *Endpoint) Target() string { return ep.target }

// Addr is the listener's address, such as "127.0.0.1:43127" ("bufconn" for
// Bufconn).
func (ep *Endpoint) Addr() string { return ep.lis.Addr().String() }

// ClientCredentials returns transport credentials that match the endpoint:
// TLS trusting only the endpoint's self-signed certificate, or insecure
// credentials for a plaintext endpoint.
func (ep *Endpoint) ClientCredentials() credentials.TransportCredentials {
	return ep.clientCreds
}

// DialOptions returns what grpc.NewClient needs to reach the endpoint: its
// transport credentials and, for Bufconn, the in-memory dialer. Callers
// append their own options, such as interceptors.
func (ep *Endpoint) DialOptions() []grpc.DialOption {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(ep.clientCreds)}
	if ep.buf != nil {
		buf := ep.buf
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return buf.DialContext(ctx)
		}))
	}
	return opts
}

// NewClient returns a client connection to the endpoint made with
// grpc.NewClient(ep.Target(), ep.DialOptions() followed by opts). The caller
// closes it.
func (ep *Endpoint) NewClient(opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return grpc.NewClient(ep.target, append(ep.DialOptions(), opts...)...)
}

// CertificatePEM returns the PEM encoding of the endpoint's self-signed
// certificate, which is also the CA a client must trust, or nil when the
// endpoint does not use TLS.
func (ep *Endpoint) CertificatePEM() []byte {
	return append([]byte(nil), ep.certPEM...)
}

// Stop stops the endpoint and returns once its goroutines have exited. It
// first lets in-flight RPCs finish (grpc.Server.GracefulStop); after the stop
// timeout (DefaultStopTimeout unless StopTimeout says otherwise) it closes
// those still running. Stop is idempotent and safe for concurrent use; every
// call returns after the endpoint has stopped.
func (ep *Endpoint) Stop() {
	ep.stopOnce.Do(func() {
		graceful := make(chan struct{})
		go func() {
			defer close(graceful)
			ep.gs.GracefulStop()
		}()
		if ep.stopTimeout > 0 {
			t := time.NewTimer(ep.stopTimeout)
			select {
			case <-graceful:
			case <-t.C:
			}
			t.Stop()
		}
		// Stop is a no-op once GracefulStop has finished, and otherwise
		// closes the remaining RPCs, which also ends GracefulStop.
		ep.gs.Stop()
		<-graceful
		<-ep.serveDone
	})
}

// Done returns a channel that is closed once the endpoint has stopped
// serving, whether through Stop or because its listener failed (see Err).
func (ep *Endpoint) Done() <-chan struct{} { return ep.serveDone }

// Err returns the error Serve returned, or nil while the endpoint is
// serving and after a clean Stop.
func (ep *Endpoint) Err() error {
	select {
	case <-ep.serveDone:
		return ep.serveErr
	default:
		return nil
	}
}

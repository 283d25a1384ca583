package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenrefresh/grpc-tokenrefresh/interceptor"
	"github.com/tokenrefresh/grpc-tokenrefresh/testserver"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// transportCreds are the credentials for a server the demo did not start in
// this process: without TLS (the interceptors must then be told so), with
// TLS trusting the CA in caFile, or with TLS and the system roots.
func transportCreds(plaintext bool, caFile string) (credentials.TransportCredentials, []interceptor.Option, error) {
	switch {
	case plaintext:
		return insecure.NewCredentials(), []interceptor.Option{interceptor.AllowInsecure()}, nil
	case caFile != "":
		c, err := credentials.NewClientTLSFromFile(caFile, "")
		if err != nil {
			return nil, nil, fmt.Errorf("reading the CA certificate: %w", err)
		}
		return c, nil, nil
	}
	return credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12}), nil, nil
}

// client is one replica's connection and Source, as every phase and every
// fleet worker makes them: the Refresher logs in and refreshes through
// AuthService on the very connection it supplies tokens for
// (interceptor.NewClient), and the interceptors count the calls they retry.
type client struct {
	cc      *grpc.ClientConn
	src     *tokensource.Source
	retried atomic.Int64
	base    tokensource.Stats // after the first token, before the load
}

// newClient connects to target and obtains the first token before it
// returns, so that the callers counted as waiting are the load's, not the
// first token's. sopts and iopts configure the Source and the interceptors;
// everything else is the library's default.
func newClient(ctx context.Context, target string, creds credentials.TransportCredentials, user, password string,
	timeout time.Duration, iopts []interceptor.Option, sopts ...tokensource.Option) (*client, error) {
	c := &client{}
	iopts = append(slices.Clip(iopts), interceptor.WithRetryObserver(func(context.Context, string, error) { c.retried.Add(1) }))
	cc, src, err := interceptor.NewClient(target, func(cc grpc.ClientConnInterface) *tokensource.Source {
		return tokensource.New(testserver.NewRefresher(cc, user, password), sopts...)
	}, grpc.WithTransportCredentials(creds), interceptor.WithInterceptorOptions(iopts...))
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", target, err)
	}
	c.cc, c.src = cc, src
	tctx, cancel := context.WithTimeout(ctx, timeout)
	_, err = src.Token(tctx)
	cancel()
	if err != nil {
		c.close()
		return nil, fmt.Errorf("the first token: %w", err)
	}
	c.base = src.Stats()
	return c, nil
}

// close closes the Source first: Close lets a refresh in flight finish (and
// save a rotated refresh token), and that refresh uses the connection.
func (c *client) close() {
	_ = c.src.Close()
	_ = c.cc.Close()
}

// figures are the running totals of the load so far: total's calls and the
// Source's refreshes and waiting callers since the first token.
func (c *client) figures(total *counters) progressFigures {
	st := c.src.Stats()
	return progressFigures{
		OK: total.ok.Load(), Failed: total.failed.Load(),
		Refreshes: int64(st.Refreshes - c.base.Refreshes), Waited: int64(st.Waited - c.base.Waited),
	}
}

package main

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	echov1 "github.com/tokenrefresh/grpc-tokenrefresh/proto/tokenrefresh/echo/v1"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// tokenTracker follows the Source's tokens through its observer events and
// tells apart the reasons a token was replaced. That is what makes "one
// refresh per expiry" checkable: a refresh that replaced a token which had
// not expired, without being an early background refresh, is one too many
// (a refresh storm would produce many of those).
//
// The demo's Source has no expiry leeway, so a token counts as expired from
// its Expiry on, the same instant the server starts rejecting it.
type tokenTracker struct {
	mu          sync.Mutex
	have        bool      // a token has been obtained
	expiry      time.Time // the current token's, zero: never expires
	logins      int       // the first token (the Refresher logs in)
	expired     int       // refreshes that replaced an expired token
	early       int       // background refreshes of a still-valid token
	valid       int       // other refreshes of a still-valid token
	failures    int       // failed refreshes
	reauth      int       // refreshes that ended in ReauthRequired
	maxWaiters  int       // most callers released by one refresh
	sumWaiters  int       // callers released by refreshes, in total
	lastFailure string    // the last refresh error, for the summary
}

func (t *tokenTracker) observe(ev tokensource.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch ev.Kind {
	case tokensource.RefreshSucceeded:
		switch {
		case !t.have:
			t.logins++
		case !t.expiry.IsZero() && !ev.Time.Before(t.expiry):
			t.expired++
		case ev.Background:
			t.early++
		default:
			t.valid++
		}
		t.have, t.expiry = true, ev.Expiry
	case tokensource.RefreshFailed:
		t.failures++
		t.lastFailure = ev.Err.Error()
	case tokensource.ReauthRequired:
		t.reauth++
		t.lastFailure = ev.Err.Error()
	default:
		return
	}
	t.maxWaiters = max(t.maxWaiters, ev.Waiters)
	t.sumWaiters += ev.Waiters
}

// tokenSummary is what tokenTracker saw until the end of the load.
type tokenSummary struct {
	logins      int
	refreshes   int // successful refreshes after the login
	expiries    int // tokens that reached their expiry while in use
	early       int
	valid       int
	failures    int
	reauth      int
	maxWaiters  int
	sumWaiters  int
	lastFailure string
}

// summary counts the expiries up to end: the tokens replaced after they
// expired, plus the current token if it expired before end (the refresh
// that replaces it may not have happened yet).
func (t *tokenTracker) summary(end time.Time) tokenSummary {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := tokenSummary{
		logins:      t.logins,
		refreshes:   t.expired + t.early + t.valid,
		expiries:    t.expired,
		early:       t.early,
		valid:       t.valid,
		failures:    t.failures,
		reauth:      t.reauth,
		maxWaiters:  t.maxWaiters,
		sumWaiters:  t.sumWaiters,
		lastFailure: t.lastFailure,
	}
	if t.have && !t.expiry.IsZero() && !end.Before(t.expiry) {
		s.expiries++
	}
	return s
}

// rejectionCounter is installed inside the token interceptors, so it sees
// every attempt they make, and counts the EchoService attempts the server
// answered with Unauthenticated. Comparing that with the Unauthenticated
// errors the workers got shows how many rejections the interceptors
// absorbed.
type rejectionCounter struct{ n atomic.Int64 }

var echoPrefix = "/" + echov1.EchoService_ServiceDesc.ServiceName + "/"

func (r *rejectionCounter) note(method string, err error) {
	if status.Code(err) == codes.Unauthenticated && strings.HasPrefix(method, echoPrefix) {
		r.n.Add(1)
	}
}

func (r *rejectionCounter) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	r.note(method, err)
	return err
}

func (r *rejectionCounter) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		r.note(method, err)
		return nil, err
	}
	return &countingStream{ClientStream: cs, r: r, method: method}, nil
}

// countingStream counts a stream's rejection once, whether it surfaces
// through RecvMsg or Header.
type countingStream struct {
	grpc.ClientStream
	r       *rejectionCounter
	method  string
	counted atomic.Bool
}

func (s *countingStream) note(err error) {
	if status.Code(err) == codes.Unauthenticated && s.counted.CompareAndSwap(false, true) {
		s.r.note(s.method, err)
	}
}

func (s *countingStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	s.note(err)
	return err
}

func (s *countingStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	s.note(err)
	return md, err
}

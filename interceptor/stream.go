package interceptor

import (
	"context"
	"io"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// clientStream wraps the stream of one call so that a rejection of its token
// before the first response message can be repaired: refresh the token,
// reopen the stream, replay what was sent, carry on.
//
// Lock rules. grpc allows one goroutine in SendMsg or CloseSend while
// another is in RecvMsg, and Header, Trailer and Context from anywhere.
//   - mu guards the fields below it and is never held across a call on an
//     underlying stream.
//   - recvLock is a channel used as a lock, so that a waiter can give up
//     when its context ends. Its holder is the one goroutine that may call
//     RecvMsg on the underlying stream, and the only one that may replace
//     it: the caller's RecvMsg holds it for the whole call; Header and
//     SendMsg take it, in settle, only to find out how a stream they saw
//     end ended. settle is the one place that decides on a reopen, and
//     resolve, which reopens, runs only inside it, under recvLock.
//   - While the stream is replaced (reopening) and while the replacement
//     replays the buffered sends (replaying), senders wait, so the server
//     sees every message once and in order; a replay holds no lock.
type clientStream struct {
	i        *interceptor
	ctx      context.Context // the caller's, without the token header (from outgoing)
	desc     *grpc.StreamDesc
	cc       *grpc.ClientConn
	method   string
	streamer grpc.Streamer
	opts     []grpc.CallOption
	// waitForReady: the call was made with grpc.WaitForReady(true).
	waitForReady bool

	recvLock chan struct{}

	mu        sync.Mutex
	cur       *attempt
	reopening bool // cur is being replaced; senders wait for cur.done
	replaying bool // cur is replaying the buffer; senders wait for cur.replayed
	// buf holds clones of the messages sent so far while replayable.
	buf      []proto.Message
	bufBytes int
	// replayable: buf holds every message sent so far and the stream may
	// still be reopened (no response yet, no retry yet, within the bound).
	replayable bool
	closeSent  bool
	received   bool // a response message has arrived
	retried    bool
	// refreshedFor is the token this call last asked the source to refresh.
	refreshedFor *tokensource.Token
	// final, once set, is what RecvMsg returns from then on.
	final error
	// pending is a response that arrived while settle asked for the status
	// of a stream that SendMsg or Header saw end; the next RecvMsg delivers
	// it.
	pending *emptypb.Empty
}

// attempt is one underlying stream of the call.
type attempt struct {
	cs  grpc.ClientStream
	tok *tokensource.Token // the token it carries

	done   chan struct{} // closed when replaced, or when the call ended here
	closed bool          // done is closed; guarded by clientStream.mu

	replayed    chan struct{} // closed once the replay below is done
	replayBuf   []proto.Message
	replayClose bool
}

func newClientStream(i *interceptor, ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts []grpc.CallOption, cs grpc.ClientStream, tok *tokensource.Token, retried bool) *clientStream {
	return &clientStream{
		i:          i,
		ctx:        ctx,
		desc:       desc,
		cc:         cc,
		method:     method,
		streamer:   streamer,
		opts:       opts,
		recvLock:   make(chan struct{}, 1),
		cur:        &attempt{cs: cs, tok: tok, done: make(chan struct{})},
		replayable: !retried && i.opts.maxReplayBytes > 0 && protoWireFormat(opts),
		retried:    retried,
	}
}

// Header returns the header of the current underlying stream. If that
// stream ended before sending a header (the shape of a server's token
// rejection) and the stream can still be reopened, Header finds out why it
// ended, reopens it when the token was rejected, and returns the new
// stream's header. Like grpc-go, it returns (nil, nil) when the stream ended;
// RecvMsg then reports the status. Once Header has returned a header, the
// stream is no longer reopened (grpc-go's own retries stop there too): the
// caller has seen the server's answer, and the server may have acted on the
// messages.
func (w *clientStream) Header() (metadata.MD, error) {
	for {
		w.mu.Lock()
		a, reopening, maybe := w.cur, w.reopening, w.canReopenLocked()
		w.mu.Unlock()
		if !reopening {
			md, err := a.cs.Header()
			if md != nil {
				w.mu.Lock()
				if w.cur != a || w.reopening {
					// A receiver replaced a meanwhile, or is replacing it:
					// return the header of the stream the caller will talk to.
					w.mu.Unlock()
					continue
				}
				w.dropBufferLocked()
				w.mu.Unlock()
				return md, err
			}
			if err != nil || !maybe {
				return md, err
			}
		}
		// a ended without a header, or is being replaced.
		if !w.settle(a, nil) {
			return nil, nil
		}
	}
}

// Trailer returns the trailer of the current underlying stream.
func (w *clientStream) Trailer() metadata.MD { return w.current().cs.Trailer() }

// Context returns the context of the current underlying stream. Like
// grpc-go's own retries, which calling Context disables, the stream is no
// longer reopened once Context was called: a reopen would end the context
// the caller now holds. (grpc-go documents that Context should not be
// called before Header or RecvMsg has returned.)
func (w *clientStream) Context() context.Context {
	w.mu.Lock()
	w.dropBufferLocked()
	a := w.cur
	w.mu.Unlock()
	return a.cs.Context()
}

// CloseSend closes the sending side of the current underlying stream and
// remembers that it did, so that a reopened stream is closed the same way.
func (w *clientStream) CloseSend() error {
	w.mu.Lock()
	if err := w.waitSendableLocked(); err != nil {
		w.mu.Unlock()
		return err
	}
	w.closeSent = true
	a := w.cur
	w.mu.Unlock()
	return a.cs.CloseSend()
}

// SendMsg sends m on the current underlying stream, keeping a clone for a
// replay while the stream may still be reopened. When the underlying stream
// has ended (io.EOF) and m is kept, SendMsg finds out why: if the token was
// rejected, the stream is reopened, m is replayed with the rest, and
// SendMsg returns nil.
func (w *clientStream) SendMsg(m any) error {
	w.mu.Lock()
	if err := w.waitSendableLocked(); err != nil {
		w.mu.Unlock()
		return err
	}
	if w.final != nil {
		w.mu.Unlock()
		return io.EOF
	}
	a := w.cur
	// After CloseSend, grpc-go refuses the message; it must not be kept
	// for a replay that would send it after all.
	kept := !w.closeSent && w.keepLocked(m)
	w.mu.Unlock()

	err := a.cs.SendMsg(m)
	if err == nil || !kept {
		return err
	}
	if err != io.EOF {
		// grpc-go aborted the stream on the client side (a message too
		// large, say): what it refused must never be replayed.
		w.mu.Lock()
		w.dropBufferLocked()
		w.mu.Unlock()
		return err
	}
	// a ended. The message is part of the replay if a was reopened (no
	// other sender can have dropped it meanwhile); otherwise io.EOF, as
	// grpc-go does, so that the caller turns to RecvMsg for the status.
	if w.settle(a, nil) && w.current() != a {
		return nil
	}
	return io.EOF
}

// RecvMsg receives the next response. If the underlying stream fails with a
// token rejection before the first response, RecvMsg reopens it (see the
// package documentation) and receives from the new stream instead.
func (w *clientStream) RecvMsg(m any) error {
	if err := w.lockRecv(); err != nil {
		return err
	}
	defer func() { <-w.recvLock }()
	for {
		w.mu.Lock()
		if p := w.pending; p != nil {
			w.pending = nil
			w.mu.Unlock()
			return deliver(p, m)
		}
		if err := w.final; err != nil {
			w.mu.Unlock()
			return err
		}
		a := w.cur
		w.mu.Unlock()

		err := a.cs.RecvMsg(m)
		if err == nil || err == io.EOF {
			w.settled(a, err, nil)
			return err
		}
		w.settle(a, err) // a was reopened, or w.final is set
	}
}

func (w *clientStream) lockRecv() error {
	select {
	case w.recvLock <- struct{}{}:
		return nil
	default:
	}
	select {
	case w.recvLock <- struct{}{}:
		return nil
	case <-w.ctx.Done():
		return status.FromContextError(w.ctx.Err()).Err()
	}
}

// settle deals with the end of attempt a and reports whether the caller
// may carry on (false: its context ended while it waited). On return, a was
// reopened (the replay started), or the call's outcome is recorded (w.final
// or w.pending), or a is not the current attempt any more.
//
// The receiver, which holds recvLock, passes the error a's RecvMsg
// returned. Header and SendMsg, which saw a end otherwise, pass nil: settle
// then takes recvLock, unless another goroutine settles a meanwhile (a.done),
// and asks a for its status itself. That wait is short: a ended, so whoever
// holds recvLock is about to return.
func (w *clientStream) settle(a *attempt, err error) bool {
	if err == nil {
		select {
		case w.recvLock <- struct{}{}:
		case <-a.done:
			return true
		case <-w.ctx.Done():
			return false
		}
		defer func() { <-w.recvLock }()
		w.mu.Lock()
		mine := w.cur == a && w.canReopenLocked()
		w.mu.Unlock()
		if !mine {
			return true
		}
		// Empty keeps the bytes of any message as unknown fields, so a
		// response that arrives after all is not lost: the next RecvMsg
		// decodes it.
		capture := new(emptypb.Empty)
		if err = a.cs.RecvMsg(capture); err == nil || err == io.EOF {
			w.settled(a, err, capture)
			return true
		}
	}
	switch next := w.resolve(a, err); {
	case next == nil:
	case len(next.replayBuf) == 0 && !next.replayClose:
		w.replay(next)
	default:
		// On a goroutine of its own, so that a receiver can go on receiving
		// meanwhile (a server that answers every message could otherwise
		// fill the flow-control windows and stall the replay). Senders wait
		// for the replay in any case.
		go w.replay(next)
	}
	return true
}

// settled records what a's RecvMsg returned when it did not end the call
// with an error: a response (kept in w.pending when it is the captured
// one), or the clean end of the stream.
func (w *clientStream) settled(a *attempt, err error, captured *emptypb.Empty) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == io.EOF {
		w.endLocked(a, err)
		return
	}
	w.pending = captured
	w.markReceivedLocked()
}

// resolve acts on err, which ended attempt a; only settle calls it, with
// recvLock held, so nobody else replaces a meanwhile. If the token was
// rejected and the stream can be reopened, resolve refreshes
// the token, opens the new stream and returns it (its replay still to do).
// A rejection whose challenge says a new token cannot help (see
// challenged) becomes the call's final error at once. Otherwise it records
// err (or the refresh failure) as the call's final error, refreshing the
// source for later calls when the token was rejected but the stream could
// not be reopened, and returns nil.
func (w *clientStream) resolve(a *attempt, err error) *attempt {
	if cerr := challengedStream(a.cs, err); cerr != nil {
		// The server asked for a scope or an authentication that a new
		// token cannot bring: no refresh, no reopen.
		w.mu.Lock()
		if w.cur == a {
			w.endLocked(a, cerr)
		}
		w.mu.Unlock()
		return nil
	}
	rejected := w.i.rejected(w.ctx, w.method, err)
	w.mu.Lock()
	if w.cur != a || w.final != nil {
		w.mu.Unlock()
		return nil
	}
	if !rejected || !w.canReopenLocked() {
		// After a failed retry, refreshing again would not help (as for
		// unary calls). After a response, or past the replay bound, the
		// token may well be stale: refresh it for the calls to come.
		later := rejected && (w.received || !w.retried) && w.refreshedFor != a.tok
		if later {
			w.refreshedFor = a.tok
		}
		w.endLocked(a, err)
		w.mu.Unlock()
		if later {
			if _, rerr := w.i.src.Refresh(w.ctx, a.tok); rerr != nil {
				w.i.opts.logger.DebugContext(w.ctx, "interceptor: refresh after a stream's token was rejected failed",
					"method", w.method, "error", rerr)
			}
		}
		return nil
	}
	w.retried, w.refreshedFor, w.reopening = true, a.tok, true
	buf, closeSent := w.buf, w.closeSent
	w.buf, w.bufBytes, w.replayable = nil, 0, false
	w.mu.Unlock()

	tok, hv, rerr := w.i.renew(w.ctx, w.method, a.tok, err, w.waitForReady)
	var cs grpc.ClientStream
	if rerr == nil {
		w.i.opts.logger.DebugContext(w.ctx, "interceptor: stream token rejected, reopening with a new token",
			"method", w.method, "replay_messages", len(buf))
		cs, rerr = w.streamer(w.i.attachAgain(w.ctx, hv), w.desc, w.cc, w.method, w.opts...)
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if rerr != nil {
		w.endLocked(a, rerr)
		return nil
	}
	next := &attempt{cs: cs, tok: tok, done: make(chan struct{}), replayed: make(chan struct{}),
		replayBuf: buf, replayClose: closeSent}
	w.cur, w.reopening, w.replaying = next, false, true
	a.closed = true
	close(a.done)
	return next
}

// challengedStream is challenged for err, which ended the stream cs: the
// stream has ended, so its header and trailer are there to read.
func challengedStream(cs grpc.ClientStream, err error) error {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied:
	default:
		return nil
	}
	header, _ := cs.Header()
	return challenged(err, header, cs.Trailer())
}

// replay sends the kept messages, and CloseSend if the caller had closed,
// on the new attempt a, then lets the caller's senders through. A send that
// fails stops the replay; RecvMsg reports the stream's status.
func (w *clientStream) replay(a *attempt) {
	ok := true
	for _, m := range a.replayBuf {
		if err := a.cs.SendMsg(m); err != nil {
			ok = false
			break
		}
	}
	if ok && a.replayClose {
		_ = a.cs.CloseSend() // grpc-go's CloseSend always returns nil
	}
	w.mu.Lock()
	a.replayBuf = nil
	w.replaying = false
	close(a.replayed)
	w.mu.Unlock()
}

// waitSendableLocked waits, with mu held on entry and on return, until no
// reopen or replay is under way.
func (w *clientStream) waitSendableLocked() error {
	for w.reopening || w.replaying {
		ch := w.cur.replayed
		if w.reopening {
			ch = w.cur.done
		}
		w.mu.Unlock()
		select {
		case <-ch:
		case <-w.ctx.Done():
			w.mu.Lock()
			return status.FromContextError(w.ctx.Err()).Err()
		}
		w.mu.Lock()
	}
	return nil
}

// keepLocked keeps a clone of m for a replay while the stream is replayable
// and reports whether it did. A message that would exceed the bound, or
// that is not a proto.Message, ends buffering for good.
func (w *clientStream) keepLocked(m any) bool {
	if !w.replayable {
		return false
	}
	pm, ok := m.(proto.Message)
	if !ok {
		w.dropBufferLocked()
		return false
	}
	const frameHeader = 5 // counted so that empty messages are not free
	n := proto.Size(pm) + frameHeader
	if w.bufBytes+n > w.i.opts.maxReplayBytes {
		w.dropBufferLocked()
		return false
	}
	w.buf = append(w.buf, proto.Clone(pm))
	w.bufBytes += n
	return true
}

func (w *clientStream) dropBufferLocked() {
	w.buf, w.bufBytes, w.replayable = nil, 0, false
}

func (w *clientStream) markReceivedLocked() {
	w.received = true
	w.dropBufferLocked()
}

func (w *clientStream) canReopenLocked() bool {
	return w.replayable && !w.received && !w.retried && w.final == nil && w.pending == nil
}

// endLocked records err as the call's final result on attempt a and lets
// anyone waiting for a go.
func (w *clientStream) endLocked(a *attempt, err error) {
	if w.final == nil {
		w.final = err
	}
	w.reopening = false
	w.dropBufferLocked()
	if !a.closed {
		a.closed = true
		close(a.done)
	}
}

func (w *clientStream) current() *attempt {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cur
}

// protoWireFormat reports whether the call's messages travel in the protocol
// buffers wire format, as they do unless a call option (possibly a default
// one of the connection) selects another codec. Replay depends on it: a
// settle captures a response it was not asked for as the unknown fields of
// an emptypb.Empty, which any other codec would fail to decode or, worse,
// decode into nothing. Codecs are resolved as grpc-go does: a forced codec
// wins over a content subtype, and the last option of a kind wins.
func protoWireFormat(opts []grpc.CallOption) bool {
	forced, subtype := "", ""
	for _, o := range opts {
		switch o := o.(type) {
		case grpc.ForceCodecCallOption:
			if o.Codec != nil {
				forced = o.Codec.Name()
			}
		case grpc.ForceCodecV2CallOption:
			if o.CodecV2 != nil {
				forced = o.CodecV2.Name()
			}
		case grpc.ContentSubtypeCallOption:
			subtype = strings.ToLower(o.ContentSubtype)
		}
	}
	name := forced
	if name == "" {
		name = subtype
	}
	return name == "" || name == "proto"
}

// deliver decodes a response captured by settle into the caller's message.
func deliver(p *emptypb.Empty, m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "interceptor: cannot deliver a response into %T, which is not a proto.Message", m)
	}
	if err := proto.Unmarshal(p.ProtoReflect().GetUnknown(), pm); err != nil {
		return status.Errorf(codes.Internal, "interceptor: decoding a response: %v", err)
	}
	return nil
}

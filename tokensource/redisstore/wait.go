package redisstore

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Wait blocks until the record's version differs from version or no live
// lease exists (released, committed or expired), re-reading the record on
// every notification on the Store's channel and every poll interval (the
// fallback for a notification lost with a broken pub/sub connection). It
// returns nil then, ctx.Err() when ctx ends first, or the error of a re-read
// (matching tokensource.ErrCoordinatorUnavailable when Redis cannot be
// reached). All Waits of a Store share one subscription, which exists only
// while someone waits.
func (s *Store) Wait(ctx context.Context, version uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sub := s.notify.acquire()
	defer s.notify.release(sub)

	timer := time.NewTimer(s.opts.poll)
	defer timer.Stop()
	// Read only once the subscription is confirmed, so that no commit falls
	// between the read and the subscription; the poll interval bounds the
	// wait for a subscription that cannot be made.
	select {
	case <-sub.ready:
	case <-timer.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	for {
		wake := sub.wakeChan() // before the read: a later event closes it
		v, leased, err := s.probe(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return err
		}
		if v != version || !leased {
			return nil
		}
		timer.Reset(s.opts.poll) // since Go 1.23 Reset drops a pending tick
		select {
		case <-wake:
		case <-timer.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// notifier owns the Store's shared subscription: started by the first
// waiter, stopped by the last.
type notifier struct {
	store *Store
	mu    sync.Mutex
	refs  int
	sub   *subscription
}

func (n *notifier) acquire() *subscription {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.refs++
	if n.sub == nil {
		n.sub = n.store.subscribe()
	}
	return n.sub
}

func (n *notifier) release(sub *subscription) {
	n.mu.Lock()
	n.refs--
	last := n.refs == 0
	if last {
		n.sub = nil
	}
	n.mu.Unlock()
	if last {
		// Outside mu: the subscription's goroutine never takes it, but a
		// new waiter should not wait for this one's teardown either.
		sub.stop()
	}
}

// subscription is one SUBSCRIBE to the Store's channel and the goroutine
// that receives on it, fanning events out to every waiter by closing and
// replacing wake.
type subscription struct {
	ps     *redis.PubSub
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine has returned
	ready  chan struct{} // closed at the first confirmed subscription

	mu        sync.Mutex
	wake      chan struct{}
	readyOnce sync.Once
}

func (s *Store) subscribe() *subscription {
	ctx, cancel := context.WithCancel(context.Background())
	sub := &subscription{
		ps:     s.client.Subscribe(ctx), // no channel yet: no I/O here
		cancel: cancel,
		done:   make(chan struct{}),
		ready:  make(chan struct{}),
		wake:   make(chan struct{}),
	}
	go sub.run(ctx, s)
	return sub
}

// run subscribes and receives until stop. go-redis reconnects and
// resubscribes on the Receive after a failure; every (re)subscription
// confirmation wakes the waiters too, since notifications sent while the
// connection was down are lost.
func (sub *subscription) run(ctx context.Context, s *Store) {
	defer close(sub.done)
	if err := sub.ps.Subscribe(ctx, s.channel); err != nil && ctx.Err() == nil {
		s.opts.logger.Debug("redisstore: subscribing failed; retrying", "channel", s.channel, "error", err)
	}
	backoff := minReconnectDelay
	for {
		msg, err := sub.ps.Receive(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.opts.logger.Debug("redisstore: pub/sub receive failed; reconnecting", "channel", s.channel, "error", err)
			if cc, ok := s.client.(*redis.ClusterClient); ok {
				// The subscription reconnects to the master of the
				// channel's slot as the client knows it: after a
				// failover, only a reload finds the new one, and
				// nothing else may make this client reload.
				cc.ReloadState(ctx)
			}
			// The next Receive reconnects; back off so as not to spin
			// while Redis is down (waiters re-read on their own timers).
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxReconnectDelay)
			continue
		}
		backoff = minReconnectDelay
		switch msg.(type) {
		case *redis.Subscription:
			sub.readyOnce.Do(func() { close(sub.ready) })
			sub.broadcast()
		case *redis.Message:
			sub.broadcast()
		}
	}
}

// The delays between attempts to restore a broken subscription: short, so
// that waiters hear of commits soon after Redis is back, but bounded so that
// an outage costs a dial a second at most.
const (
	minReconnectDelay = 10 * time.Millisecond
	maxReconnectDelay = time.Second
)

func (sub *subscription) wakeChan() <-chan struct{} {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return sub.wake
}

func (sub *subscription) broadcast() {
	sub.mu.Lock()
	close(sub.wake)
	sub.wake = make(chan struct{})
	sub.mu.Unlock()
}

// stop ends the subscription and waits for its goroutine: cancel aborts a
// dial in progress, Close unblocks a Receive.
func (sub *subscription) stop() {
	sub.cancel()
	_ = sub.ps.Close()
	<-sub.done
}

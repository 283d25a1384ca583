package redistest

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Link is a loopback TCP proxy that carries a replica's replication stream
// from its master, so that a test can make the replica lag or miss writes,
// which a paused replica does not do (the kernel buffers what is sent to a
// stopped process, and it catches up when continued): SetDelay delays what
// the master sends, Hold stops it, Cut drops the connection together with
// whatever the link still holds. What the replica sends (its
// acknowledgements) passes at once. StartReplicaVia starts a replica behind
// a Link.
type Link struct {
	// Addr is the address the replica connects to.
	Addr string

	target string
	ln     net.Listener
	wg     sync.WaitGroup

	mu     sync.Mutex
	cond   *sync.Cond
	delay  time.Duration
	held   bool
	closed bool
	conns  map[*linkConn]struct{}
}

// NewLink starts a Link to target (host:port), closed when the test ends.
func NewLink(tb testing.TB, target string) *Link {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	l := &Link{Addr: ln.Addr().String(), target: target, ln: ln, conns: make(map[*linkConn]struct{})}
	l.cond = sync.NewCond(&l.mu)
	l.wg.Go(l.accept)
	tb.Cleanup(l.close)
	return l
}

// StartReplicaVia starts a replica of master whose replication goes through
// a new Link, and waits until its first sync is done.
func StartReplicaVia(tb testing.TB, master *Server, args ...string) (*Server, *Link) {
	tb.Helper()
	l := NewLink(tb, master.Addr)
	host, port, _ := net.SplitHostPort(l.Addr)
	rep := StartTCP(tb, append([]string{"--replicaof", host, port}, args...)...)
	waitSynced(tb, rep)
	return rep, l
}

// SetDelay makes what the master sends arrive d later (0: at once).
func (l *Link) SetDelay(d time.Duration) {
	l.mu.Lock()
	l.delay = d
	l.mu.Unlock()
	l.cond.Broadcast()
}

// Hold keeps what the master sends in the link until Release (or Cut,
// which drops it).
func (l *Link) Hold() {
	l.mu.Lock()
	l.held = true
	l.mu.Unlock()
}

// Release delivers what Hold kept and lets the stream flow again.
func (l *Link) Release() {
	l.mu.Lock()
	l.held = false
	l.mu.Unlock()
	l.cond.Broadcast()
}

// Cut closes the link's connections and drops what they still hold, as a
// network failure would; the replica reconnects through the link (which
// then dials the master again) and a later Release is not needed. It leaves
// the link held if it was.
func (l *Link) Cut() {
	l.mu.Lock()
	conns := l.conns
	l.conns = make(map[*linkConn]struct{})
	l.mu.Unlock()
	for c := range conns {
		c.close()
	}
	l.cond.Broadcast()
}

func (l *Link) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	_ = l.ln.Close()
	l.Cut()
	l.wg.Wait()
}

func (l *Link) accept() {
	for {
		down, err := l.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", l.target, time.Second)
		if err != nil {
			_ = down.Close()
			continue
		}
		c := newLinkConn(down, up)
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			c.close()
			return
		}
		l.conns[c] = struct{}{}
		l.mu.Unlock()
		queue := make(chan chunk, 1024)
		l.wg.Go(func() { _, _ = io.Copy(up, down); c.close() })
		l.wg.Go(func() { l.readMaster(c, queue) })
		l.wg.Go(func() { l.deliver(c, queue) })
	}
}

// chunk is what the master sent, and when.
type chunk struct {
	data []byte
	at   time.Time
}

func (l *Link) readMaster(c *linkConn, queue chan<- chunk) {
	defer close(queue)
	for {
		buf := make([]byte, 32<<10)
		n, err := c.up.Read(buf)
		if n > 0 {
			select {
			case queue <- chunk{data: buf[:n], at: time.Now()}:
			case <-c.done():
				return
			}
		}
		if err != nil {
			c.close()
			return
		}
	}
}

// deliver writes the master's chunks to the replica once their delay has
// passed and the link is not held.
func (l *Link) deliver(c *linkConn, queue <-chan chunk) {
	for ch := range queue {
		l.mu.Lock()
		for {
			if c.isClosed() {
				l.mu.Unlock()
				return
			}
			wait := time.Until(ch.at.Add(l.delay))
			if !l.held && wait <= 0 {
				break
			}
			if wait <= 0 {
				wait = 5 * time.Millisecond // held: look again soon
			}
			// The condition variable cannot wait with a timeout; a
			// timer broadcast ends the wait.
			t := time.AfterFunc(wait, l.cond.Broadcast)
			l.cond.Wait()
			t.Stop()
		}
		l.mu.Unlock()
		if _, err := c.down.Write(ch.data); err != nil {
			c.close()
			return
		}
	}
}

// linkConn is one proxied connection.
type linkConn struct {
	down, up net.Conn
	once     sync.Once
	doneCh   chan struct{} // closed by close
}

func newLinkConn(down, up net.Conn) *linkConn {
	return &linkConn{down: down, up: up, doneCh: make(chan struct{})}
}

func (c *linkConn) done() <-chan struct{} { return c.doneCh }

func (c *linkConn) isClosed() bool {
	select {
	case <-c.doneCh:
		return true
	default:
		return false
	}
}

func (c *linkConn) close() {
	c.once.Do(func() {
		close(c.doneCh)
		_ = c.down.Close()
		_ = c.up.Close()
	})
}

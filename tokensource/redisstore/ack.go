package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// replicaAck is the setting of WithReplicaAck; nil in options when off.
type replicaAck struct {
	n       int
	timeout time.Duration
}

// WithReplicaAck makes every write of a token (Lease.Commit, Save, Restore)
// wait until n replicas have acknowledged it (Redis's WAIT, at most timeout)
// before it reports success and before waiters are notified; a Commit
// returns, and so hands the token out, only then. It protects the fleet
// against a failover to a replica that had not yet received the newest
// token: without it, a commit acknowledged by the master alone can vanish
// with the master, and with it the only copy of a rotated refresh token.
//
// When fewer replicas acknowledge within timeout, the call fails with an
// error matching ErrNotReplicated and tokensource.ErrCoordinatorUnavailable.
// The write stays on the master (a Commit has ended the lease, as a
// successful one does), and no notification goes out, although a waiter
// that re-reads at its poll interval may find it there. A Source keeps such
// a commit pending and offers it again with Restore, which waits for the
// acknowledgement again, also when it finds the record already at that
// version (it then reports that it did not write, with a nil error once
// acknowledged).
//
// It never blocks the fleet when replicas are gone: a write waits for
// min(n, live) replicas, where live counts the replicas that the master
// reports (INFO replication) as online and acknowledging within the last 3
// seconds (Redis replicas acknowledge every second). With no live replica
// left, writes succeed at once without waiting, as on a Redis without
// replicas, and the Store logs it at Warn. A replica that is connected but
// stalled (paused, or far behind) counts until it has missed two
// acknowledgements, so writes fail with ErrNotReplicated during that time;
// after it, they go on without it. For a hard floor instead, set
// min-replicas-to-write on the master (writes then fail with NOREPLICAS,
// which matches tokensource.ErrCoordinatorUnavailable).
//
// The WAIT has to run on the connection that made the write, so the Store
// holds one pooled connection for the write and its WAIT (the WAIT blocks
// it for up to timeout, or until the caller's ctx ends with
// ContextTimeoutEnabled): client must be a *redis.Client (a
// single server, or redis.NewFailoverClient for Sentinel) or a
// *redis.ClusterClient (the connection goes to the master of the record's
// slot); New panics for other clients, and for a timeout <= 0 (WAIT 0
// would block forever). n <= 0 turns acknowledgement off (the default).
// timeout is rounded up to whole milliseconds; Redis checks it on its event
// loop, so a WAIT may last up to 1/hz (100 ms at the default hz 10) longer. An ACL user needs +info and
// +wait as well (see the package documentation).
func WithReplicaAck(n int, timeout time.Duration) Option {
	return func(o *options) {
		if n <= 0 {
			o.ack = nil
			return
		}
		if r := timeout % time.Millisecond; r != 0 {
			timeout += time.Millisecond - r
		}
		o.ack = &replicaAck{n: n, timeout: timeout}
	}
}

// checkReplicaAck returns why client cannot honour ack, or "".
func checkReplicaAck(client redis.UniversalClient, ack *replicaAck) string {
	if ack == nil {
		return ""
	}
	if ack.timeout <= 0 {
		return "redisstore: WithReplicaAck: the timeout must be positive (WAIT with timeout 0 blocks until the replicas answer, however long)"
	}
	switch client.(type) {
	case *redis.Client, *redis.ClusterClient:
		return ""
	}
	return fmt.Sprintf("redisstore: WithReplicaAck needs a *redis.Client (redis.NewClient, or redis.NewFailoverClient for Sentinel) "+
		"or a *redis.ClusterClient, to WAIT on the connection that wrote; got %T", client)
}

// maxReplicaLag is how long ago (whole seconds, as INFO reports it) a replica
// may have acknowledged last and still count as live: two missed
// acknowledgements.
const maxReplicaLag = 3

// writer runs a writing script: on the client itself, with the script
// announcing the new version; or, with WithReplicaAck, on one connection to
// the master, so that WAIT covers the write, with the announcement after it.
type writer struct {
	s    *Store
	conn redis.Scripter
	own  *redis.Conn // the dedicated connection with WithReplicaAck
}

func (s *Store) writer(ctx context.Context) (writer, error) {
	if s.opts.ack == nil {
		return writer{s: s, conn: s.client}, nil
	}
	var c *redis.Client
	switch cl := s.client.(type) {
	case *redis.Client:
		c = cl
	case *redis.ClusterClient:
		node, err := cl.MasterForKey(ctx, s.recordKey)
		if err != nil {
			return writer{}, err
		}
		c = node
	}
	conn := c.Conn()
	return writer{s: s, conn: conn, own: conn}, nil
}

func (w writer) close() {
	if w.own != nil {
		_ = w.own.Close()
	}
}

// publishInScript is the scripts' argument that says whether they announce
// the new version themselves.
func (w writer) publishInScript() string {
	if w.own != nil {
		return "0"
	}
	return "1"
}

// acknowledge finishes a write that the script made without announcing it:
// it waits for the replicas and then publishes version. Without
// WithReplicaAck the script has announced it already.
func (w writer) acknowledge(ctx context.Context, op, version string) error {
	if w.own == nil {
		return nil
	}
	s, ack := w.s, w.s.opts.ack
	live, err := liveReplicas(ctx, w.own)
	if err != nil {
		return s.fail(ctx, op+": reading the replicas", err)
	}
	if need := min(ack.n, live); need > 0 {
		acked, err := w.own.Wait(ctx, need, ack.timeout).Result()
		if err != nil {
			return s.fail(ctx, op+": waiting for the replicas", err)
		}
		if acked < int64(need) {
			return fmt.Errorf("redisstore: %s: %w: %w: %d of %d live replicas acknowledged within %v",
				op, ErrNotReplicated, tokensource.ErrCoordinatorUnavailable, acked, need, ack.timeout)
		}
	} else {
		s.opts.logger.Warn("redisstore: no live replica; the write is on the master only", "key", s.recordKey, "wanted", ack.n)
	}
	if err := w.own.Publish(ctx, s.channel, version).Err(); err != nil {
		// Written and acknowledged: waiters find it at their next
		// re-read, so failing the write would only make it be offered
		// again.
		s.opts.logger.Warn("redisstore: announcing a write failed; waiters will re-read", "key", s.recordKey, "error", wrap(ctx, "publishing", err))
	}
	return nil
}

// liveReplicas counts the replicas that the master reports online and
// acknowledging within maxReplicaLag seconds.
func liveReplicas(ctx context.Context, c *redis.Conn) (int, error) {
	info, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return 0, err
	}
	n := 0
	for line := range strings.Lines(info) {
		// slave0:ip=127.0.0.1,port=6380,state=online,offset=123,lag=0
		name, fields, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "slave") || !strings.Contains(fields, "=") {
			continue
		}
		online, lag := false, -1
		for f := range strings.SplitSeq(fields, ",") {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "state":
				online = v == "online"
			case "lag":
				lag, _ = strconv.Atoi(v)
			}
		}
		if online && lag >= 0 && lag <= maxReplicaLag {
			n++
		}
	}
	return n, nil
}

package redisstore

import (
	"bytes"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// ackTimeout is a WAIT timeout that a healthy replica on a loaded machine
// meets; the tests never pass or fail by it (a replica that is up answers
// in a millisecond or so).
const ackTimeout = 10 * time.Second

// replicaVersion reads the record's version on a replica, in raw RESP: what
// a failover to that replica would keep.
func replicaVersion(t *testing.T, rep *redistest.Server, s *Store) string {
	t.Helper()
	v, err := rep.Do("HGET", s.recordKey, "version")
	if err != nil {
		t.Fatalf("HGET on the replica: %v", err)
	}
	str, _ := v.(string)
	return str
}

// TestReplicaAckCommitReachesReplica: with WithReplicaAck, Commit, Save and
// Restore return only once the replica has the write: a failover right
// after they return keeps it.
func TestReplicaAckCommitReachesReplica(t *testing.T) {
	r := redistest.StartReplicated(t, 1)
	ctx := testContext(t)
	rep := r.Replicas[0]
	s := member(t, r.Master, "token", WithReplicaAck(1, ackTimeout))

	if err := s.Save(ctx, secretToken()); err != nil {
		t.Fatalf("Save: %v", err)
	}
	if v := replicaVersion(t, rep, s); v != "1" {
		t.Fatalf("the replica has version %q when Save returns; want 1", v)
	}
	for i := range 3 {
		l := mustLease(t, ctx, s)
		if err := l.Commit(ctx, secretToken()); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		if v, want := replicaVersion(t, rep, s), l.Record().Version+1; v != itoa(want) {
			t.Fatalf("commit %d: the replica has version %q when Commit returns; want %d", i, v, want)
		}
	}
	if _, err := s.Restore(ctx, tokensource.Record{Token: secretToken(), Version: 10}); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if v := replicaVersion(t, rep, s); v != "10" {
		t.Fatalf("the replica has version %q when Restore returns; want 10", v)
	}
}

// TestReplicaAckLatency measures what the acknowledgement costs a commit on
// loopback (logged, not asserted).
func TestReplicaAckLatency(t *testing.T) {
	r := redistest.StartReplicated(t, 1)
	ctx := testContext(t)
	plain := member(t, r.Master, "plain")
	acked := member(t, r.Master, "acked", WithReplicaAck(1, ackTimeout))
	median := func(s *Store) time.Duration {
		var d []time.Duration
		for range 31 {
			l := mustLease(t, ctx, s)
			start := time.Now()
			if err := l.Commit(ctx, secretToken()); err != nil {
				t.Fatalf("Commit: %v", err)
			}
			d = append(d, time.Since(start))
		}
		slices.Sort(d)
		return d[len(d)/2]
	}
	t.Logf("median Commit: %v without WithReplicaAck, %v with WithReplicaAck(1, …) (one replica, loopback)", median(plain), median(acked))
}

// TestReplicaAckStalledReplica: a replica that is connected but does not
// acknowledge (paused with SIGSTOP, as a lagging or stalled host) makes the
// commit fail with ErrNotReplicated, which is also a coordinator outage, and
// nothing announces the unacknowledged token. Once the replica is back, a
// Restore of the same record waits again and succeeds without writing, the
// replica then has the commit, and the record is announced.
func TestReplicaAckStalledReplica(t *testing.T) {
	r := redistest.StartReplicated(t, 1)
	ctx := testContext(t)
	rep := r.Replicas[0]
	holder := member(t, r.Master, "token", WithReplicaAck(1, 200*time.Millisecond))
	repairer := member(t, r.Master, "token", WithReplicaAck(1, ackTimeout))
	if err := repairer.Save(ctx, secretToken()); err != nil {
		t.Fatal(err)
	}
	// A listener on the channel sees every announcement, as waiters would.
	ps := newClient(t, r.Master).Subscribe(ctx, holder.channel)
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatalf("subscribing: %v", err)
	}
	l := mustLease(t, ctx, holder)
	v := l.Record().Version

	rep.Pause()
	defer rep.Resume()
	tok := secretToken()
	err := l.Commit(ctx, tok)
	if !errors.Is(err, ErrNotReplicated) || !errors.Is(err, tokensource.ErrCoordinatorUnavailable) {
		t.Fatalf("Commit while the replica is stalled = %v; want ErrNotReplicated and ErrCoordinatorUnavailable", err)
	}
	noSecrets(t, err)
	// Written on the master, not announced. (An announcement would have
	// been sent before Commit returned; the wait only lets it arrive.)
	wantRecord(t, holder, tok, v+1)
	if msg, err := ps.ReceiveTimeout(ctx, 200*time.Millisecond); err == nil {
		t.Fatalf("an unacknowledged commit was announced: %v", msg)
	}

	rep.Resume()
	wrote, err := repairer.Restore(ctx, tokensource.Record{Token: tok, Version: v + 1})
	if err != nil || wrote {
		t.Fatalf("Restore of the unacknowledged commit = %v, %v; want false (already there), nil (acknowledged now)", wrote, err)
	}
	if got := replicaVersion(t, rep, holder); got != itoa(v+1) {
		t.Fatalf("the replica has version %q after the Restore; want %d", got, v+1)
	}
	if _, err := ps.ReceiveMessage(ctx); err != nil {
		t.Fatalf("no announcement after the acknowledged Restore: %v", err)
	}
}

// TestReplicaAckNoReplicaLeft: with every replica gone, writes succeed at
// once, as on a Redis without replicas, and the Store says so in its log;
// they never wait out the timeout (an hour here, far past the test's
// deadline). With one of two replicas left, a write waits for that one.
func TestReplicaAckNoReplicaLeft(t *testing.T) {
	r := redistest.StartReplicated(t, 2)
	ctx := testContext(t)
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	s := member(t, r.Master, "token", WithReplicaAck(2, time.Hour), WithLogger(logger))

	r.Replicas[0].Kill()
	r.Master.WaitReplicas(t, 1)
	l := mustLease(t, ctx, s)
	if err := l.Commit(ctx, secretToken()); err != nil {
		t.Fatalf("Commit with one of two replicas left: %v", err)
	}
	if v := replicaVersion(t, r.Replicas[1], s); v != "1" {
		t.Fatalf("the remaining replica has version %q when Commit returns; want 1", v)
	}

	r.Replicas[1].Kill()
	r.Master.WaitReplicas(t, 0)
	l = mustLease(t, ctx, s)
	start := time.Now()
	if err := l.Commit(ctx, secretToken()); err != nil {
		t.Fatalf("Commit with no replica left: %v", err)
	}
	t.Logf("Commit with no replica left took %v", time.Since(start))
	if err := s.Save(ctx, secretToken()); err != nil {
		t.Fatalf("Save with no replica left: %v", err)
	}
	if !strings.Contains(logs.String(), "no live replica") {
		t.Fatalf("no warning logged for a write without replicas; log:\n%s", logs.String())
	}
}

// TestReplicaAckConfiguration: options that WithReplicaAck cannot honour
// fail at New, not at the first commit.
func TestReplicaAckConfiguration(t *testing.T) {
	srv := redistest.Start(t)
	c := newClient(t, srv)
	mustPanic(t, "a zero timeout", func() { New(c, "token", WithReplicaAck(1, 0)) })
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
	defer ring.Close()
	mustPanic(t, "a Ring client", func() { New(ring, "{token}", WithReplicaAck(1, time.Second)) })
	New(c, "token", WithReplicaAck(0, 0)) // off
}

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Fatalf("New with %s did not panic", what)
		}
	}()
	f()
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

// syncBuffer is a bytes.Buffer for a logger used from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestReplicaAckStalledReplicaLeftOut: a replica that has stopped
// acknowledging for more than two of its one-second acknowledgements no
// longer counts as live, so a stalled replica costs the fleet failed writes
// for a few seconds at most, never for as long as it stays stalled: the
// write then succeeds at once, without waiting out the timeout (an hour).
func TestReplicaAckStalledReplicaLeftOut(t *testing.T) {
	r := redistest.StartReplicated(t, 1)
	ctx := testContext(t)
	s := member(t, r.Master, "token", WithReplicaAck(1, time.Hour))
	r.Replicas[0].Pause()
	defer r.Replicas[0].Resume()
	redistest.WaitFor(t, "the master to see the replica stalled", func() (bool, error) {
		reps, _, err := r.Master.Replicas()
		return err == nil && len(reps) == 1 && reps[0].Lag > maxReplicaLag, err
	})
	l := mustLease(t, ctx, s)
	if err := l.Commit(ctx, secretToken()); err != nil {
		t.Fatalf("Commit with the only replica stalled for long: %v", err)
	}
}

// TestReplicaAckLaggingReplica: a replica whose stream arrives half a
// second late (a Link with a delay) makes a commit wait that long, or fail
// with ErrNotReplicated when the timeout is shorter. (Redis checks WAIT's
// timeout on its event loop, up to 1/hz = 100 ms late by default, so the
// lag is well above that.)
func TestReplicaAckLaggingReplica(t *testing.T) {
	m := redistest.StartTCP(t)
	rep, link := redistest.StartReplicaVia(t, m)
	m.WaitReplicas(t, 1)
	ctx := testContext(t)
	const lag = 500 * time.Millisecond
	link.SetDelay(lag)

	short := member(t, m, "token", WithReplicaAck(1, lag/10))
	l := mustLease(t, ctx, short)
	if err := l.Commit(ctx, secretToken()); !errors.Is(err, ErrNotReplicated) {
		t.Fatalf("Commit with a %v timeout and a replica %v behind = %v; want ErrNotReplicated", lag/10, lag, err)
	}

	long := member(t, m, "token", WithReplicaAck(1, ackTimeout))
	l = mustLease(t, ctx, long)
	start := time.Now()
	if err := l.Commit(ctx, secretToken()); err != nil {
		t.Fatalf("Commit with a replica %v behind: %v", lag, err)
	}
	t.Logf("Commit with a replica %v behind took %v", lag, time.Since(start))
	if v := replicaVersion(t, rep, long); v != "2" {
		t.Fatalf("the replica has version %q when Commit returns; want 2", v)
	}
}

package redisstore

import (
	"testing"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
)

// A record written under another replication history than the server's (a
// replica promoted since, or a master restarted) may have lost a later
// write: the lease reports it as restored, so that the next refresher waits
// the repair grace for a member holding a newer token. A member that starts
// after a failover to a lagging replica knows nothing else that would tell
// it (the seed-7 Sentinel campaign: a restarted member presented the
// refresh token whose rotation the failover had dropped, while the member
// holding that rotation was alive). The next commit writes the new history.
func TestLeaseReportsAnotherHistory(t *testing.T) {
	r := redistest.StartReplicated(t, 1)
	ctx := testContext(t)
	onMaster := New(newClient(t, r.Master), "token")
	saveN(t, onMaster, 2)
	l := mustLease(t, ctx, onMaster)
	if l.Record().Restored {
		t.Fatal("lease on the master that wrote the record: Restored = true, want false")
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	r.Master.WaitReplicas(t, 1)

	rep := r.Replicas[0]
	if _, err := rep.Do("REPLICAOF", "NO", "ONE"); err != nil {
		t.Fatalf("promoting the replica: %v", err)
	}
	onPromoted := New(newClient(t, rep), "token") // a member with no history
	l = mustLease(t, ctx, onPromoted)
	if rec := l.Record(); !rec.Restored || rec.Version != 2 {
		t.Fatalf("lease on the promoted replica: Restored = %v at version %d, want true at 2 (written under the old master's history)", rec.Restored, rec.Version)
	}
	if err := l.Commit(ctx, secretToken()); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	l = mustLease(t, ctx, onPromoted)
	if rec := l.Record(); rec.Restored || rec.Version != 3 {
		t.Fatalf("lease after a commit on the promoted replica: Restored = %v at version %d, want false at 3", rec.Restored, rec.Version)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// LoadRecord reports only what Restore marked: the history is the
	// lease's concern (the Source looks at it before presenting).
	if rec, err := onPromoted.LoadRecord(ctx); err != nil || rec.Restored {
		t.Fatalf("LoadRecord = %v, %v; want Restored false", rec, err)
	}
}

package redistest

import (
	"testing"
	"time"
)

func TestReplicated(t *testing.T) {
	r := StartReplicated(t, 1)
	if _, err := r.Master.Do("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	r.Master.WaitReplicas(t, 1)
	if v, err := r.Replicas[0].Do("GET", "k"); err != nil || v != "v" {
		t.Fatalf("replica GET = %v, %v", v, err)
	}
	r.Replicas[0].Kill()
	r.Master.WaitReplicas(t, 0)
}

func TestCluster(t *testing.T) {
	c := StartCluster(t, 3, 1)
	m := c.MasterFor(t, "{k}")
	if _, err := m.Do("SET", "{k}", "v"); err != nil {
		t.Fatal(err)
	}
	old, took := c.KillMasterFor(t, "{k}")
	nm := c.MasterFor(t, "{k}")
	if nm == old {
		t.Fatal("no failover")
	}
	t.Logf("cluster failover took %v", took)

	// The killed master comes back (nodes.conf kept) as a replica of the
	// master that replaced it.
	start := time.Now()
	old.Restart()
	WaitFor(t, "the old master to rejoin as a replica", func() (bool, error) {
		role, err := old.Role()
		return role == "slave", err
	})
	c.WaitHealthy(t)
	nm.WaitReplicas(t, 1)
	t.Logf("the restarted master rejoined as a replica in %v", time.Since(start))
}

func TestSentinelFailover(t *testing.T) {
	s := StartSentinel(t, 1, 3)
	m := s.Master(t)
	if _, err := m.Do("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	old, promoted, took := s.Failover(t)
	if old == promoted {
		t.Fatal("no failover")
	}
	t.Logf("sentinel failover took %v", took)

	// The killed master comes back as a replica of the promoted one.
	start := time.Now()
	old.RestartReplicaOf(promoted)
	promoted.WaitReplicas(t, 1)
	if m := s.Master(t); m != promoted {
		t.Fatalf("master after the old one came back: %s; want %s", m.Addr, promoted.Addr)
	}
	t.Logf("the restarted master rejoined as a replica in %v", time.Since(start))
}

// TestLink: a replica behind a held Link misses the master's writes (its
// acknowledgement stays behind); released, it catches up; cut while held,
// it loses what was held and resynchronises from the master.
func TestLink(t *testing.T) {
	m := StartTCP(t)
	rep, link := StartReplicaVia(t, m)
	m.WaitReplicas(t, 1)
	link.Hold()
	if _, err := m.Do("SET", "k", "v1"); err != nil {
		t.Fatal(err)
	}
	if v, _ := rep.Do("GET", "k"); v != nil {
		t.Fatalf("a replica behind a held link has k = %v", v)
	}
	link.Release()
	m.WaitReplicas(t, 1)
	if v, _ := rep.Do("GET", "k"); v != "v1" {
		t.Fatalf("after Release the replica has k = %v; want v1", v)
	}

	link.SetDelay(50 * time.Millisecond)
	if _, err := m.Do("SET", "k", "v2"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	WaitFor(t, "the delayed write", func() (bool, error) {
		v, err := rep.Do("GET", "k")
		return v == "v2", err
	})
	t.Logf("a write reached a replica behind a 50 ms link after %v", time.Since(start))
	link.SetDelay(0)

	link.Hold()
	if _, err := m.Do("SET", "k", "v3"); err != nil {
		t.Fatal(err)
	}
	link.Cut()
	link.Release()
	m.WaitReplicas(t, 1)
	if v, _ := rep.Do("GET", "k"); v != "v3" {
		t.Fatalf("after a cut the replica resynchronised to k = %v; want v3", v)
	}
}

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

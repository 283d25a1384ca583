package redistest

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"
)

// Sentinel is a master with replicas watched by Sentinels, which promote a
// replica when the master dies.
type Sentinel struct {
	// Name is the master's name in Sentinel ("mymaster"), for
	// redis.FailoverOptions.MasterName.
	Name string
	// Servers are the data servers: the first master first, then the
	// replicas. Master tells the current master.
	Servers []*Server
	// Sentinels are the sentinel processes (redis-server FILE --sentinel).
	Sentinels []*Server
	// Links are the replicas' replication links (StartSentinelVia), nil
	// otherwise.
	Links []*Link
}

// StartSentinel starts a master with replicas replicas and sentinels
// Sentinels (quorum: a majority of them), all on loopback TCP without
// persistence, and waits until every Sentinel knows every replica and every
// other Sentinel, so that a failover can start as soon as the master is
// declared down (down-after-milliseconds 1000). args go to the data
// servers.
func StartSentinel(tb testing.TB, replicas, sentinels int, args ...string) *Sentinel {
	tb.Helper()
	r := StartReplicated(tb, replicas, args...)
	return startSentinels(tb, &Sentinel{Name: "mymaster", Servers: append([]*Server{r.Master}, r.Replicas...)}, sentinels)
}

// StartSentinelVia is StartSentinel with every replica replicating through
// a Link (Links[i] for Servers[i+1]), so that a test can make a replica lag
// or miss the master's last writes before a failover. The links carry the
// first master's stream only: after a failover the Sentinels point the
// replicas at the promoted master directly.
func StartSentinelVia(tb testing.TB, replicas, sentinels int, args ...string) *Sentinel {
	tb.Helper()
	m := StartTCP(tb, args...)
	s := &Sentinel{Name: "mymaster", Servers: []*Server{m}}
	for range replicas {
		rep, link := StartReplicaVia(tb, m, args...)
		s.Servers = append(s.Servers, rep)
		s.Links = append(s.Links, link)
	}
	m.WaitReplicas(tb, replicas)
	return startSentinels(tb, s, sentinels)
}

// startSentinels starts sentinels Sentinels watching s.Servers[0] and waits
// until they know each other and the replicas.
func startSentinels(tb testing.TB, s *Sentinel, sentinels int) *Sentinel {
	tb.Helper()
	replicas := len(s.Servers) - 1
	host, port, _ := net.SplitHostPort(s.Servers[0].Addr)
	quorum := sentinels/2 + 1
	for range sentinels {
		s.Sentinels = append(s.Sentinels, startSentinel(tb, fmt.Sprintf(
			"protected-mode no\n"+
				"sentinel monitor %[1]s %[2]s %[3]s %[4]d\n"+
				"sentinel down-after-milliseconds %[1]s 1000\n"+
				"sentinel failover-timeout %[1]s 10000\n"+
				"sentinel parallel-syncs %[1]s 1\n",
			s.Name, host, port, quorum)))
	}
	WaitFor(tb, "every Sentinel to know the replicas and the other Sentinels", func() (bool, error) {
		for _, sn := range s.Sentinels {
			reps, err := sn.Do("SENTINEL", "REPLICAS", s.Name)
			if err != nil {
				return false, err
			}
			peers, err := sn.Do("SENTINEL", "SENTINELS", s.Name)
			if err != nil {
				return false, err
			}
			if len(reps.([]any)) != replicas || len(peers.([]any)) != sentinels-1 {
				return false, nil
			}
		}
		return true, nil
	})
	return s
}

// startSentinel starts one Sentinel on a free port with conf, retrying with
// another port when it cannot bind.
func startSentinel(tb testing.TB, conf string) *Server {
	tb.Helper()
	var last error
	for range 5 {
		port := freePort(tb)
		sn := newServer(tb, "port "+strconv.Itoa(port)+"\nbind 127.0.0.1\n"+conf, []string{"--sentinel"})
		sn.Addr = "127.0.0.1:" + strconv.Itoa(port)
		if last = sn.start(); last == nil {
			return sn
		}
	}
	tb.Fatalf("redistest: starting a Sentinel: %v", last)
	return nil
}

// Addrs returns the Sentinels' addresses, for
// redis.FailoverOptions.SentinelAddrs.
func (s *Sentinel) Addrs() []string {
	addrs := make([]string, len(s.Sentinels))
	for i, sn := range s.Sentinels {
		addrs[i] = sn.Addr
	}
	return addrs
}

// Master returns the data server that every running Sentinel names as the
// master and that reports itself a master, waiting while they disagree (a
// failover in progress).
func (s *Sentinel) Master(tb testing.TB) *Server {
	tb.Helper()
	var m *Server
	WaitFor(tb, "the Sentinels to agree on a master", func() (bool, error) {
		var err error
		m, err = s.agreedMaster()
		return m != nil, err
	})
	return m
}

func (s *Sentinel) agreedMaster() (*Server, error) {
	addr := ""
	for _, sn := range s.Sentinels {
		if !sn.Running() {
			continue
		}
		v, err := sn.Do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.Name)
		if err != nil {
			return nil, err
		}
		a, ok := v.([]any)
		if !ok || len(a) != 2 {
			return nil, nil
		}
		got := a[0].(string) + ":" + a[1].(string)
		if addr != "" && got != addr {
			return nil, nil
		}
		addr = got
	}
	for _, srv := range s.Servers {
		if srv.Addr == addr && srv.Running() {
			if role, err := srv.Role(); err != nil || role != "master" {
				return nil, err
			}
			return srv, nil
		}
	}
	return nil, nil
}

// Failover kills (SIGKILL) the current master and waits until the Sentinels
// agree on a promoted replica that reports itself master. It returns the
// killed server, the new master, and the time from the kill until then:
// Sentinel's detection (down-after-milliseconds), agreement, election and
// promotion (about 2.3 s on loopback). To bring the killed server back,
// RestartReplicaOf(promoted) makes it a replica at once; a plain Restart
// brings it back as an empty master that the Sentinels reconfigure as a
// replica only when they next look at it (up to 10 s later).
func (s *Sentinel) Failover(tb testing.TB) (old, promoted *Server, took time.Duration) {
	tb.Helper()
	old = s.Master(tb)
	start := time.Now()
	old.Kill()
	WaitFor(tb, "a failover", func() (bool, error) {
		m, err := s.agreedMaster()
		promoted = m
		return m != nil && m != old, err
	})
	return old, promoted, time.Since(start)
}

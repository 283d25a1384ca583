package redistest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// topologyTimeout bounds how long a topology helper waits for the servers to
// reach a state (replicas in sync, a failover done). Generous for a loaded
// CI machine; it only turns a hang into a failure.
const topologyTimeout = 60 * time.Second

// Replicated is a master with replicas, each replicating over loopback TCP.
type Replicated struct {
	Master   *Server
	Replicas []*Server
}

// StartReplicated starts a master and n replicas of it (redis-server
// --replicaof), all without persistence, and waits until every replica is
// online and has caught up. args go to every server.
func StartReplicated(tb testing.TB, n int, args ...string) *Replicated {
	tb.Helper()
	r := &Replicated{Master: StartTCP(tb, args...)}
	for range n {
		r.Replicas = append(r.Replicas, StartReplica(tb, r.Master, args...))
	}
	r.Master.WaitReplicas(tb, n)
	return r
}

// StartReplica starts a replica of master (which needs an Addr) and waits
// until it has finished its first sync.
func StartReplica(tb testing.TB, master *Server, args ...string) *Server {
	tb.Helper()
	host, port, _ := strings.Cut(master.Addr, ":")
	rep := StartTCP(tb, append([]string{"--replicaof", host, port}, args...)...)
	waitSynced(tb, rep)
	return rep
}

// waitSynced waits until the replica rep reports its link to the master up.
func waitSynced(tb testing.TB, rep *Server) {
	tb.Helper()
	WaitFor(tb, "the replica's first sync", func() (bool, error) {
		info, err := rep.Info("replication")
		if err != nil {
			return false, err
		}
		return info["master_link_status"] == "up", nil
	})
}

// WaitReplicas waits until s reports exactly n replicas online, each
// acknowledging s's current replication offset: every write made before
// the call has reached them.
func (s *Server) WaitReplicas(tb testing.TB, n int) {
	tb.Helper()
	WaitFor(tb, fmt.Sprintf("%d replicas online and in sync", n), func() (bool, error) {
		reps, offset, err := s.Replicas()
		if err != nil {
			return false, err
		}
		if len(reps) != n {
			return false, nil
		}
		for _, r := range reps {
			if r.State != "online" || r.Offset < offset {
				return false, nil
			}
		}
		return true, nil
	})
}

// ReplicaInfo is what a master reports of one replica (INFO replication).
type ReplicaInfo struct {
	Addr   string // host:port
	State  string // "online" once synced
	Offset int64  // the replication offset it acknowledged
	Lag    int    // seconds since its last acknowledgement
}

// Replicas returns the replicas that s reports and its own replication
// offset.
func (s *Server) Replicas() ([]ReplicaInfo, int64, error) {
	info, err := s.Info("replication")
	if err != nil {
		return nil, 0, err
	}
	offset, _ := strconv.ParseInt(info["master_repl_offset"], 10, 64)
	var reps []ReplicaInfo
	for i := 0; ; i++ {
		line, ok := info["slave"+strconv.Itoa(i)]
		if !ok {
			return reps, offset, nil
		}
		var r ReplicaInfo
		var host, port string
		for f := range strings.SplitSeq(line, ",") {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "ip":
				host = v
			case "port":
				port = v
			case "state":
				r.State = v
			case "offset":
				r.Offset, _ = strconv.ParseInt(v, 10, 64)
			case "lag":
				r.Lag, _ = strconv.Atoi(v)
			}
		}
		r.Addr = host + ":" + port
		reps = append(reps, r)
	}
}

// Role returns the first element of ROLE: "master", "slave" or "sentinel".
func (s *Server) Role() (string, error) {
	v, err := s.Do("ROLE")
	if err != nil {
		return "", err
	}
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return "", fmt.Errorf("redistest: ROLE answered %v", v)
	}
	role, _ := a[0].(string)
	return role, nil
}

// WaitFor polls cond every 20 ms until it reports true, failing the test
// after a minute; what names the condition in the failure. Server state has
// no notification to wait on, so the topology helpers poll; cond's error is
// kept for the failure message only (a server may be restarting).
func WaitFor(tb testing.TB, what string, cond func() (bool, error)) {
	tb.Helper()
	deadline := time.Now().Add(topologyTimeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redistest: waiting for %s: gave up after %v (last error: %v)", what, topologyTimeout, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

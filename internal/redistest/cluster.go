package redistest

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// Cluster is a Redis Cluster of loopback servers: masters that share the
// hash slots evenly, each with its replicas, which take over when it dies.
type Cluster struct {
	// Nodes are all the servers: the masters first (in slot order), then
	// the replicas. Which is master changes with a failover; MasterFor
	// tells the current one.
	Nodes []*Server

	masters int
}

// StartCluster starts a cluster of masters masters, each with
// replicasPerMaster replicas, all without persistence, and waits until the
// cluster is healthy (every node reports cluster_state:ok and every replica
// is in sync). It builds the cluster by hand as redis-cli --cluster create
// would (distinct config epochs, ADDSLOTSRANGE, MEET, REPLICATE), in raw
// RESP. cluster-node-timeout is 1000 ms, so that a killed master is replaced
// within a few seconds; args go to every node and may override it. A
// failover needs replicasPerMaster >= 1, and with the default
// cluster-require-full-coverage the whole cluster refuses commands
// (CLUSTERDOWN) until the failover of a dead master.
func StartCluster(tb testing.TB, masters, replicasPerMaster int, args ...string) *Cluster {
	tb.Helper()
	if masters < 1 || masters > clusterSlots {
		tb.Fatalf("redistest: StartCluster: %d masters", masters)
	}
	c := &Cluster{masters: masters}
	total := masters * (1 + replicasPerMaster)
	for range total {
		c.Nodes = append(c.Nodes, startTCP(tb, func(int) []string {
			return append([]string{
				"--cluster-enabled", "yes",
				"--cluster-config-file", "nodes.conf",
				"--cluster-node-timeout", "1000",
				"--cluster-port", strconv.Itoa(freePort(tb)),
				// A replica takes over however long it was cut off.
				"--cluster-replica-validity-factor", "0",
			}, args...)
		}))
	}
	ids := make([]string, total)
	for i, n := range c.Nodes {
		id, err := n.String("CLUSTER", "MYID")
		if err != nil {
			tb.Fatalf("redistest: CLUSTER MYID: %v", err)
		}
		ids[i] = id
	}
	for i := range masters {
		first, last := i*clusterSlots/masters, (i+1)*clusterSlots/masters-1
		m := c.Nodes[i]
		must(tb, m, "CLUSTER", "SET-CONFIG-EPOCH", strconv.Itoa(i+1))
		must(tb, m, "CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(first), strconv.Itoa(last))
	}
	for _, n := range c.Nodes[1:] {
		host, port, _ := strings.Cut(n.Addr, ":")
		bus, err := n.busPort()
		if err != nil {
			tb.Fatalf("redistest: %v", err)
		}
		must(tb, c.Nodes[0], "CLUSTER", "MEET", host, port, bus)
	}
	WaitFor(tb, "every cluster node to know every other", func() (bool, error) {
		for _, n := range c.Nodes {
			nodes, err := n.clusterNodes()
			if err != nil {
				return false, err
			}
			if len(nodes) != total {
				return false, nil
			}
			for _, cn := range nodes {
				if cn.has("handshake") || cn.has("noaddr") || !cn.connected {
					return false, nil
				}
			}
		}
		return true, nil
	})
	for r := range masters * replicasPerMaster {
		must(tb, c.Nodes[masters+r], "CLUSTER", "REPLICATE", ids[r%masters])
	}
	c.WaitHealthy(tb)
	for i := range masters {
		c.Nodes[i].WaitReplicas(tb, replicasPerMaster)
	}
	return c
}

// Addrs returns the addresses of all nodes, for a cluster client's seed
// list.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr
	}
	return addrs
}

// KeySlot returns the hash slot of key, as a running node computes it.
func (c *Cluster) KeySlot(tb testing.TB, key string) int {
	tb.Helper()
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		v, err := n.Do("CLUSTER", "KEYSLOT", key)
		if err == nil {
			return int(v.(int64))
		}
	}
	tb.Fatal("redistest: no cluster node answers CLUSTER KEYSLOT")
	return 0
}

// MasterFor returns the node that the running nodes agree serves key's slot
// as master, waiting while a failover is in progress.
func (c *Cluster) MasterFor(tb testing.TB, key string) *Server {
	tb.Helper()
	slot := c.KeySlot(tb, key)
	var m *Server
	WaitFor(tb, "a master for slot "+strconv.Itoa(slot), func() (bool, error) {
		var err error
		m, err = c.slotMaster(slot)
		return m != nil, err
	})
	return m
}

// slotMaster returns the running node that every running node names as the
// master of slot, or nil while they disagree or it is not running.
func (c *Cluster) slotMaster(slot int) (*Server, error) {
	var addr string
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		nodes, err := n.clusterNodes()
		if err != nil {
			return nil, err
		}
		owner := ""
		for _, cn := range nodes {
			if cn.has("master") && !cn.has("fail") && cn.serves(slot) {
				owner = cn.addr
			}
		}
		if owner == "" || (addr != "" && owner != addr) {
			return nil, nil
		}
		addr = owner
	}
	for _, n := range c.Nodes {
		if n.Addr == addr && n.Running() {
			return n, nil
		}
	}
	return nil, nil
}

// WaitHealthy waits until every running node reports cluster_state:ok and
// they agree on a running master for every slot.
func (c *Cluster) WaitHealthy(tb testing.TB) {
	tb.Helper()
	WaitFor(tb, "a healthy cluster", func() (bool, error) {
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			info, err := n.String("CLUSTER", "INFO")
			if err != nil {
				return false, err
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return false, nil
			}
		}
		for i := range c.masters {
			m, err := c.slotMaster(i * clusterSlots / c.masters)
			if m == nil || err != nil {
				return false, err
			}
		}
		return true, nil
	})
}

// KillMasterFor kills (SIGKILL) the master serving key's slot and waits
// until a replica has taken over and the cluster is healthy again. It
// returns the killed node (Restart brings it back as a replica of the new
// master) and the time from the kill to a healthy cluster.
func (c *Cluster) KillMasterFor(tb testing.TB, key string) (*Server, time.Duration) {
	tb.Helper()
	m := c.MasterFor(tb, key)
	start := time.Now()
	m.Kill()
	c.WaitFailover(tb, key, m)
	return m, time.Since(start)
}

// WaitFailover waits until a node other than old serves key's slot and the
// cluster is healthy: what follows a kill of old.
func (c *Cluster) WaitFailover(tb testing.TB, key string, old *Server) {
	tb.Helper()
	slot := c.KeySlot(tb, key)
	WaitFor(tb, "a new master for slot "+strconv.Itoa(slot), func() (bool, error) {
		m, err := c.slotMaster(slot)
		return m != nil && m != old, err
	})
	c.WaitHealthy(tb)
}

// clusterNode is one line of CLUSTER NODES.
type clusterNode struct {
	id        string
	addr      string // host:port, without the bus port
	flags     []string
	connected bool
	slots     [][2]int
}

func (n clusterNode) has(flag string) bool {
	for _, f := range n.flags {
		if f == flag {
			return true
		}
	}
	return false
}

func (n clusterNode) serves(slot int) bool {
	for _, r := range n.slots {
		if r[0] <= slot && slot <= r[1] {
			return true
		}
	}
	return false
}

// clusterNodes parses CLUSTER NODES:
// <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
func (s *Server) clusterNodes() ([]clusterNode, error) {
	text, err := s.String("CLUSTER", "NODES")
	if err != nil {
		return nil, err
	}
	var nodes []clusterNode
	for line := range strings.Lines(text) {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		n := clusterNode{id: f[0], addr: addr, flags: strings.Split(f[2], ","), connected: f[7] == "connected"}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue // a slot being migrated
			}
			lo, hi, isRange := strings.Cut(r, "-")
			a, err1 := strconv.Atoi(lo)
			b := a
			var err2 error
			if isRange {
				b, err2 = strconv.Atoi(hi)
			}
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("redistest: CLUSTER NODES slot %q", r)
			}
			n.slots = append(n.slots, [2]int{a, b})
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// busPort returns the node's cluster bus port, from its configuration.
func (s *Server) busPort() (string, error) {
	v, err := s.Do("CONFIG", "GET", "cluster-port")
	if err != nil {
		return "", err
	}
	a, ok := v.([]any)
	if !ok || len(a) != 2 {
		return "", errors.New("redistest: CONFIG GET cluster-port: unexpected reply")
	}
	p, _ := a[1].(string)
	return p, nil
}

// must sends a command that has to succeed for the setup to go on.
func must(tb testing.TB, s *Server, args ...string) {
	tb.Helper()
	if _, err := s.Do(args...); err != nil {
		tb.Fatalf("redistest: %s on %s: %v", strings.Join(args, " "), s.Addr, err)
	}
}

package e2e_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource/redisstore"
)

// The Redis topologies of production, started by the campaign for the
// purpose (internal/redistest), each with the fault that tests it: a
// 3-master Redis Cluster (one replica each) whose master for the record's
// slot is killed, and a master with a replica watched by three Sentinels,
// failed over by killing the master. Both at a random moment or while a
// refresh is in flight (before the server rotates: the holder then has a
// token and a coordinator in failover to commit it to); the Sentinel
// failover also to a lagging replica, right after a commit that the
// replica's held stream kept from it (killLagging). Their nodes keep no
// data on disk, as the topology helpers start them.

// Pauses after an outage of a topology before the next may begin.
const (
	clusterCoolDown  = 3 * time.Second
	sentinelCoolDown = 21 * time.Second
)

// openChaosStore opens the store of a worker: the specs of openFleetStore,
// "rediscluster:<addr>,<addr>…" (a Cluster client seeded with the nodes) and
// "redissentinel:<master name>@<addr>,<addr>…" (a failover client).
func openChaosStore(spec string, leaseTTL time.Duration) (tokensource.Store, func(), error) {
	kind, arg, _ := strings.Cut(spec, ":")
	var c redis.UniversalClient
	switch kind {
	case "rediscluster":
		c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(arg, ",")})
	case "redissentinel":
		name, addrs, _ := strings.Cut(arg, "@")
		c = redis.NewFailoverClient(&redis.FailoverOptions{MasterName: name, SentinelAddrs: strings.Split(addrs, ",")})
	default:
		return openFleetStore(spec, leaseTTL)
	}
	var opts []redisstore.Option
	if leaseTTL > 0 {
		opts = append(opts, redisstore.WithLeaseTTL(leaseTTL))
	}
	return redisstore.New(c, fleetKey, opts...), func() { _ = c.Close() }, nil
}

// oneOutage serialises the outages of a topology: one at a time, as a
// second kill while a failover runs would test the helpers' patience.
type oneOutage chan struct{}

func (o oneOutage) acquire(f *faultRec) bool {
	select {
	case o <- struct{}{}:
		return true
	case <-time.After(chaosArmWithin):
		f.missed = "another outage of the store ran for " + chaosArmWithin.String()
		return false
	}
}

func (o oneOutage) release() { <-o }

// killInFlight runs kill at the next refresh the server receives (variant
// 1) or at once (variant 0), and returns when it ran; false, with f marked
// missed, when no refresh came within chaosArmWithin.
func killInFlight(c *campaign, f *faultRec, kill func()) (time.Time, bool) {
	if f.sched.variant == 0 {
		start := time.Now()
		kill()
		return start, true
	}
	killed := make(chan time.Time, 1)
	trigger := func() { start := time.Now(); kill(); killed <- start }
	select {
	case c.inflight <- trigger:
	default:
		f.missed = "another in-flight fault is armed"
		return time.Time{}, false
	}
	select {
	case start := <-killed:
		return start, true
	case <-time.After(chaosArmWithin):
		select {
		case <-c.inflight:
			f.missed = "no refresh within " + chaosArmWithin.String()
			return time.Time{}, false
		case start := <-killed:
			return start, true
		}
	}
}

func clusterTopology() *chaosTopology {
	topo := &chaosTopology{name: "RedisCluster"}
	var cl *redistest.Cluster
	outage := make(oneOutage, 1)
	topo.faults = []*faultKind{{name: "cluster-master-kill", weight: 2, variants: [2]string{"random", "inflight"}, lossy: [2]bool{true, true},
		inject: func(c *campaign, f *faultRec) {
			if !outage.acquire(f) {
				return
			}
			defer outage.release()
			m := cl.MasterFor(c.t, fleetKey)
			start, ok := killInFlight(c, f, m.Kill)
			if !ok {
				return
			}
			cl.WaitFailover(c.t, fleetKey, m)
			c.mu.Lock()
			c.storeDown = append(c.storeDown, span{start, time.Now()})
			c.mu.Unlock()
			// The fault ends once the killed node is back, as a replica
			// of the new master, and the cluster healthy: its rejoining
			// disturbs the slot's new master too.
			m.Restart()
			cl.WaitHealthy(c.t)
			f.done(start, time.Now(), -1)
			// A failover a moment after the last measures a cluster that
			// never settled: the next outage waits.
			time.Sleep(clusterCoolDown)
		}}}
	topo.setup = func(t *testing.T) {
		cl = redistest.StartCluster(t, 3, 1)
		topo.spec = "rediscluster:" + strings.Join(cl.Addrs(), ",")
		client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
		t.Cleanup(func() { _ = client.Close() })
		topo.store = redisstore.New(client, fleetKey)
	}
	return topo
}

func sentinelTopology() *chaosTopology {
	topo := &chaosTopology{name: "RedisSentinel"}
	var sn *redistest.Sentinel
	outage := make(oneOutage, 1)
	// failover kills the master with kill, which returns when it struck
	// (false: missed), and waits for the Sentinels to promote the replica.
	failover := func(c *campaign, f *faultRec, kill func(old *redistest.Server) (time.Time, bool)) {
		if !outage.acquire(f) {
			return
		}
		defer outage.release()
		old := sn.Master(c.t)
		start, ok := kill(old)
		if !ok {
			return
		}
		// Master waits until the Sentinels agree on a running master
		// that reports itself one: the promoted replica.
		promoted := sn.Master(c.t)
		c.mu.Lock()
		c.storeDown = append(c.storeDown, span{start, time.Now()})
		c.mu.Unlock()
		if promoted == old {
			c.t.Errorf("chaos: the Sentinels name the killed master as master again")
		}
		// The fault ends once the killed server is back (empty; the
		// Sentinels make it a replica of the new master).
		old.Restart()
		f.done(start, time.Now(), -1)
		// Sentinel does not fail the same master name over again
		// within twice its failover-timeout (10 s in
		// redistest.StartSentinel): the next outage waits.
		time.Sleep(time.Until(start.Add(sentinelCoolDown)))
	}
	topo.faults = []*faultKind{{name: "sentinel-failover", weight: 2, variants: [2]string{"random", "inflight"}, lossy: [2]bool{true, true},
		inject: func(c *campaign, f *faultRec) {
			failover(c, f, func(old *redistest.Server) (time.Time, bool) { return killInFlight(c, f, old.Kill) })
		}}, {name: "sentinel-failover-lagging", weight: 2, lossy: [2]bool{true, true},
		inject: func(c *campaign, f *faultRec) {
			failover(c, f, func(old *redistest.Server) (time.Time, bool) { return killLagging(c, f, sn, old) })
		}}}
	topo.setup = func(t *testing.T) {
		sn = redistest.StartSentinel(t, 1, 3)
		topo.spec = fmt.Sprintf("redissentinel:%s@%s", sn.Name, strings.Join(sn.Addrs(), ","))
		client := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: sn.Name, SentinelAddrs: sn.Addrs()})
		t.Cleanup(func() { _ = client.Close() })
		topo.store = redisstore.New(client, fleetKey)
	}
	return topo
}

// killLagging kills the master old of sn right after a member's commit
// that the replica never received: the replica's stream is moved onto a
// Link (REPLICAOF the link, a partial resync) and held there, and the kill
// follows the first commit reported after the hold, and drops what the link
// held. The Sentinels then promote a replica that misses the last commit
// and, usually, the lease it was made under: the record goes back, and
// only the committing member's repair can put its token back. It returns
// when the kill struck; false, with f marked missed, when no commit came
// within chaosArmWithin (the stream is released, and the Sentinels point
// the replica at the master again within their failover-timeout).
func killLagging(c *campaign, f *faultRec, sn *redistest.Sentinel, old *redistest.Server) (time.Time, bool) {
	var rep *redistest.Server
	for _, s := range sn.Servers {
		if s != old && s.Running() {
			rep = s
		}
	}
	if rep == nil {
		f.missed = "no running replica"
		return time.Time{}, false
	}
	link := redistest.NewLink(c.t, old.Addr)
	host, port, _ := net.SplitHostPort(link.Addr)
	if _, err := rep.Do("REPLICAOF", host, port); err != nil {
		f.missed = "moving the replica onto a link: " + err.Error()
		return time.Time{}, false
	}
	synced := time.Now().Add(chaosArmWithin)
	for {
		info, err := rep.Info("replication")
		if err == nil && info["master_port"] == port && info["master_link_status"] == "up" && info["master_sync_in_progress"] == "0" {
			break
		}
		if time.Now().After(synced) {
			f.missed = "the replica did not sync through its link within " + chaosArmWithin.String()
			return time.Time{}, false
		}
		time.Sleep(10 * time.Millisecond)
	}
	link.Hold()
	held := time.Now()
	for {
		if c.commitSince(held) {
			start := time.Now()
			old.Kill()
			link.Cut()
			return start, true
		}
		if time.Since(held) > chaosArmWithin {
			link.Release()
			f.missed = "no commit within " + chaosArmWithin.String()
			return time.Time{}, false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// commitSince reports whether a member committed a token after t.
func (c *campaign) commitSince(t time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.writes) - 1; i >= 0 && c.writes[i].at.After(t); i-- {
		if strings.HasSuffix(c.writes[i].by, " "+lineCommit) {
			return true
		}
	}
	return false
}

package e2e_test

import (
	"context"
	"flag"
	"slices"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource/redisstore"
)

var fleetBenchExpiries = flag.Int("fleetbench.expiries", 4,
	"token expiries in each episode of BenchmarkFleet (each takes about 1.3 s)")

// The tokens of BenchmarkFleet live 2 s: a 0.2 s leeway and a 0.5 s early
// window, so the fleet refreshes about every 1.3 s. A benchmark binary is
// built without -race, so this is still ample on a loaded 2-core machine.
const (
	fleetBenchTTL     = 2 * time.Second
	fleetBenchPeriod  = fleetBenchTTL - fleetBenchTTL/10 - fleetBenchTTL/4
	fleetBenchWorkers = 8
	// Callers per worker: enough that every expiry finds callers in every
	// process, few enough that 8 processes leave the two cores some room
	// (latency under CPU starvation would measure the scheduler).
	fleetBenchCallers = 4
)

// BenchmarkFleet runs fleet episodes with real processes: 8 worker
// processes sharing one credential across a few expiries against one
// testserver. Each iteration is one episode (a few seconds), so
// -benchtime Nx sets the number of episodes; the metrics pool all of them.
//
// Coordinated (FileStore, Redis): one rotating refresh token in the shared
// store. Uncoordinated: every process has a MemoryStore of its own and a
// grant for which a second refresh is harmless (a login per refresh, as
// client credentials; with rotation, uncoordinated replicas would revoke
// each other's family), so it measures what coordination saves the issuer.
//
// Metrics: refreshes/expiry is the tokens the server issued (refreshes and
// logins, without each uncoordinated process's first login) per token
// generation (Stats.Generation after the first token: coordinated, of the
// member that saw the most; uncoordinated, each process's own, averaged). adopt-p50-ms and adopt-p99-ms are, over
// every member that waited for a peer's lease and then adopted the peer's
// token, the time from the moment the holder called Lease.Commit to the
// member's TokenAdopted event, both by the wall clock of the one host.
func BenchmarkFleet(b *testing.B) {
	duration := time.Duration(*fleetBenchExpiries)*fleetBenchPeriod + fleetBenchPeriod/2
	run := func(b *testing.B, grant string, store func(testing.TB) (string, tokensource.Store), coordinated bool) {
		cfg := fleetConfig{
			workers: fleetBenchWorkers, callers: fleetBenchCallers, duration: duration, tokenTTL: fleetBenchTTL,
			grant: grant, store: store, trace: true,
		}
		var issued, generations float64
		var lat []time.Duration
		var adoptions, waitedAdoptions int
		for b.Loop() {
			ep := runFleetEpisode(b, cfg, coordinated)
			issued += ep.issued
			generations += ep.generations
			lat = append(lat, ep.latencies...)
			adoptions += ep.adoptions
			waitedAdoptions += len(ep.latencies)
		}
		b.ReportMetric(0, "ns/op") // an episode's wall time is its configured duration
		if generations > 0 {
			b.ReportMetric(issued/generations, "refreshes/expiry")
		}
		if coordinated {
			// Members that reach the early window after the holder's commit
			// adopt at once, without waiting: they measure nothing. How
			// many waited is chance; a short run may find none.
			b.Logf("%d adoptions, %d of them after waiting for the holder's lease", adoptions, waitedAdoptions)
			if len(lat) > 0 {
				b.ReportMetric(percentileMS(lat, 0.50), "adopt-p50-ms")
				b.ReportMetric(percentileMS(lat, 0.99), "adopt-p99-ms")
			}
		}
	}
	b.Run("coordinated=FileStore", func(b *testing.B) {
		run(b, "refresh", fileFleetStore, true)
	})
	b.Run("coordinated=Redis", func(b *testing.B) {
		// One redis-server for all the episodes: each episode's seed Save
		// overwrites the record, and the last commit released the lease.
		rs := redistest.Start(b)
		run(b, "refresh", func(testing.TB) (string, tokensource.Store) {
			return "redis:" + rs.Socket, redisstore.New(redisClient(b, rs), fleetKey)
		}, true)
	})
	b.Run("uncoordinated=login-per-process", func(b *testing.B) {
		run(b, "login", func(testing.TB) (string, tokensource.Store) {
			return "memory", tokensource.NewMemoryStore()
		}, false)
	})
}

// fleetEpisode is what one fleet run of BenchmarkFleet measured.
type fleetEpisode struct {
	issued      float64         // tokens the server issued, without the uncoordinated first logins
	generations float64         // token generations after the first token (see runFleetEpisode)
	adoptions   int             // TokenAdopted events
	latencies   []time.Duration // commit to adoption, for the members that waited for the lease
}

func runFleetEpisode(b *testing.B, cfg fleetConfig, coordinated bool) fleetEpisode {
	b.Helper()
	f := startFleet(b, cfg)
	calls, failed, stats := f.wait()
	f.ep.Stop()
	c := f.srv.Counters()
	if failed != 0 {
		b.Errorf("%d of %d calls failed, want 0", failed, calls)
	}
	if c.RefreshesFailed != 0 {
		b.Errorf("the server refused %d refreshes (a reused refresh token), want 0", c.RefreshesFailed)
	}
	var ep fleetEpisode
	ep.issued = float64(c.RefreshesOK + c.Logins)
	if !coordinated {
		// Each process's first token is a login of its own, at start.
		ep.issued -= float64(len(stats))
	}
	// Coordinated, the fleet has one token: its generations are those of
	// the member that saw the most (one whose callers stopped just before
	// the last adoption saw one fewer). Uncoordinated, each process has
	// its own token and expiries: the mean member's.
	for _, s := range stats {
		g := float64(s.Generation - 1)
		if coordinated {
			ep.generations = max(ep.generations, g)
		} else {
			ep.generations += g / float64(len(stats))
		}
	}

	var commits []time.Time
	for _, w := range f.workers {
		for _, e := range w.events {
			if e.kind == commitEvent {
				commits = append(commits, e.at)
			}
		}
	}
	slices.SortFunc(commits, time.Time.Compare)
	for _, w := range f.workers {
		waited := false
		for _, e := range w.events {
			switch e.kind {
			case tokensource.LeaseWaited.String():
				waited = true
			case tokensource.TokenAdopted.String():
				ep.adoptions++
				// The adopted token is the last commit before the
				// adoption: commits are an expiry apart.
				i, _ := slices.BinarySearchFunc(commits, e.at, time.Time.Compare)
				if waited && i > 0 {
					ep.latencies = append(ep.latencies, e.at.Sub(commits[i-1]))
				}
				waited = false
			case tokensource.RefreshSucceeded.String(), tokensource.RefreshFailed.String():
				waited = false
			}
		}
	}
	return ep
}

// percentileMS is the p-quantile of d (nearest rank below) in milliseconds.
func percentileMS(d []time.Duration, p float64) float64 {
	d = slices.Clone(d)
	slices.Sort(d)
	return float64(d[int(p*float64(len(d)-1))]) / float64(time.Millisecond)
}

// commitEvent is the workerEvent kind of a commit to the shared store,
// reported by a worker whose store traceCommits wraps.
const commitEvent = "commit"

// traceCommits wraps a coordinating store so that committed is called with
// the moment each successful Lease.Commit began: the holder has the new
// token, and its peers can have it as soon as the commit is visible. A
// store that does not coordinate is returned as is.
func traceCommits(st tokensource.Store, committed func(start time.Time)) tokensource.Store {
	c, ok := st.(tokensource.Coordinator)
	if !ok {
		return st
	}
	return tracedCoordinator{Coordinator: c, committed: committed}
}

type tracedCoordinator struct {
	tokensource.Coordinator
	committed func(time.Time)
}

func (c tracedCoordinator) TryLease(ctx context.Context) (tokensource.Lease, error) {
	l, err := c.Coordinator.TryLease(ctx)
	if l == nil || err != nil {
		return l, err
	}
	return tracedLease{Lease: l, committed: c.committed}, nil
}

type tracedLease struct {
	tokensource.Lease
	committed func(time.Time)
}

func (l tracedLease) Commit(ctx context.Context, t *tokensource.Token) error {
	start := time.Now()
	err := l.Lease.Commit(ctx, t)
	if err == nil {
		l.committed(start)
	}
	return err
}

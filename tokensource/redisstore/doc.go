// Package redisstore is a token Store kept in Redis that coordinates the
// refreshes of a fleet: Sources in any number of processes and hosts that
// share one credential (a rotating refresh token, or a client-credentials
// grant whose issuance is rate-limited or billed) make one Refresher call per
// expiry between them. A Store implements tokensource.Coordinator, which a
// tokensource.Source finds on its own:
//
//	rdb := redis.NewClient(&redis.Options{Addr: "redis:6379", Username: "svc-a", Password: pw,
//		ContextTimeoutEnabled: true})
//	store := redisstore.New(rdb, "token", redisstore.WithKeyPrefix("svc-a:"))
//	src := tokensource.New(refresher, tokensource.WithStore(store))
//
// It is built on github.com/redis/go-redis/v9 and works with any
// redis.UniversalClient: a single server, Sentinel, or Cluster (see Redis
// Cluster). It is tested against redis-server 7.0, also as a master with
// replicas, a 3-master Cluster with replicas and a Sentinel deployment with
// failovers; ACL users need Redis 6.0 or newer.
//
// Set redis.Options.ContextTimeoutEnabled on the client: go-redis ignores
// context deadlines without it, and a call on an unresponsive server then
// lasts until ReadTimeout (3 s by default) whatever the caller's ctx says.
// Keep go-redis's command retries (MaxRetries, 3 by default): they hide a
// connection broken by a Redis restart, and the scripts are safe to retry.
//
// # What it guarantees
//
// Together with a Source it guarantees:
//
//   - One refresh per need, fleet-wide. A member refreshes only under the
//     fleet's lease, and only if the record it read under that lease still
//     needs it; the others Wait and adopt the token it commits.
//   - Nothing is lost. The holder reads the newest record (and so the newest
//     refresh token) atomically with taking the lease, and its Commit is
//     fenced: a Lua script writes only if the record still has the version
//     read with the lease and no other member holds the lease. A member that
//     lost its lease (it paused past the TTL and another took over) is refused
//     with tokensource.ErrLeaseLost and overwrites nothing. A Commit after the
//     lease expired or was released while nobody took it over still succeeds,
//     so a late result is not lost.
//   - A dead or paused holder cannot stall the fleet. The lease has a TTL
//     (WithLeaseTTL, default 10 s), renewed every third of it while the
//     holder's Refresher runs; when the holder dies, hangs or is stopped, the
//     lease expires and the next member takes over (Lease.TakenOver reports
//     it). Waiters learn of a commit or release by pub/sub within a
//     millisecond or so, and re-read every poll interval (WithPollInterval,
//     default 250 ms) as the fallback for a lost notification and for a lease
//     that expired (Redis announces no expiry).
//   - The hot path stays local. The Store is touched only when a Source
//     refreshes, loads or waits; a Source with a valid token does no I/O.
//   - Members with a valid token go on while Redis is down, and the others do
//     not refresh without the lease: see "When Redis is down" below.
//
// A Store that read a record it cannot decode (ErrCorruptRecord,
// ErrSealMismatch; both also match tokensource.ErrCorruptStore) fails the
// operation and writes nothing over it.
//
// # Keys
//
// For New(client, key, WithKeyPrefix(prefix)) with base = prefix+key:
//
//	base           a hash: version (an integer bumped by every write),
//	               payload (the token), holder (the owner of the lease
//	               granted last and not yet ended by its Commit or Release)
//	base:lease     a string holding the lease owner (128 random bits from
//	               crypto/rand), with a PX expiry of the lease TTL
//	base:events    the pub/sub channel of commits, releases and saves
//
// No key has an expiry except the lease. TryLease, the renewal, Commit,
// Release and Save are Lua scripts (EVALSHA, falling back to EVAL after a
// restart emptied the script cache), each atomic in Redis. Takeover is
// detected with the holder field: a holder recorded in the hash while the
// lease key is gone is one whose lease expired before it committed or
// released. The scripts are idempotent for their owner, so go-redis's retry
// of a command whose reply was lost neither refuses a commit by its own write
// nor blocks the fleet with a lease its taker never learnt of.
//
// Save writes the record's version plus one; Lease.Commit writes exactly
// Lease.Record().Version+1 (a Source relies on it to know the version of the
// token it committed); Restore writes the version it is given.
//
// # Redis Cluster
//
// The scripts touch the record and the lease together, so both, and the
// channel, must hash to one slot. With a *redis.ClusterClient (or a
// *redis.Ring) the Store sees to it: when prefix+key has no hash tag of its
// own, the key part is wrapped in one, after the prefix so that ACL key
// patterns on the prefix still match:
//
//	New(cluster, "token", WithKeyPrefix("svc-a:"))
//	    record svc-a:{token}, lease svc-a:{token}:lease, channel svc-a:{token}:events
//	New(cluster, "token", WithKeyPrefix("{svc-a}:"))
//	    record {svc-a}:token (tagged already: unchanged)
//
// Store.Key returns the name in use. A single-server or Sentinel client
// (*redis.Client) keeps the names unchanged, so fleets that ran an earlier
// version keep their record. A fleet that moves from a single server to a
// Cluster starts from the tokens its members hold: a Source saves its
// initial token into an empty record, and restores the newest token it
// holds when the record is behind it. A Cluster fleet that ran an earlier
// version without a hash tag never got past its first lease (CROSSSLOT),
// so it has no record worth keeping (delete the untagged key). A prefix
// whose own braces defeat every tag ("a{}b:") makes New panic with the fix
// in its message, rather than fail with CROSSSLOT at the first refresh.
//
// Waiters subscribe with classic SUBSCRIBE: go-redis's Cluster client opens
// the subscription on the master of the channel's slot, and a classic
// PUBLISH reaches subscribers on every node over the cluster bus. go-redis's
// Cluster client keeps dialling a dead master until it reloads the slots,
// which it does by itself only every 10 s: every failure to reach Redis
// (and every broken subscription) makes the Store ask it to reload at once,
// so that a fleet works again within about a second of the failover. In the
// tests, with cluster-node-timeout 1000, the cluster is healthy again about
// 2.5 s after a master is killed, and the first write through a client that
// knew only the dead master succeeds 0.4 to 0.9 s after that. The failed
// operations in between match tokensource.ErrCoordinatorUnavailable, never
// a configuration error.
//
// # Replicas and failover
//
// Redis replicates asynchronously: a commit that the master acknowledged can
// be lost with the master when a replica that had not received it is
// promoted (by Sentinel or by the Cluster), and with it the only copy of a
// rotated refresh token. WithReplicaAck(n, timeout) closes that window: a
// write of a token returns, and is announced to waiters, only after WAIT
// confirmed that n replicas have it. A write that is not acknowledged in
// time fails with ErrNotReplicated (which also matches
// tokensource.ErrCoordinatorUnavailable): a Source keeps it pending and
// offers it again with Restore, which waits again. Writes never block the
// fleet when replicas are gone: they wait for the live replicas only (see
// WithReplicaAck). On loopback the acknowledgement adds about 0.4 ms to a
// commit. Use it with Sentinel (redis.NewFailoverClient) and with a Cluster
// whose masters have replicas.
//
// Restore puts back a token that the record lost (with a Redis restarted
// without persistence, a failover to a lagging replica, or a commit that
// failed): a fenced maximum over versions that wakes waiters and leaves the
// lease alone (see tokensource.Restorer).
//
// Every write stamps the record with the server's replication ID, which a
// promoted replica and a restarted master change. A lease on a record
// stamped with another ID reports it as Restored (tokensource.Record): a
// failover may have dropped a later commit, which the member holding it
// puts back within the Source's repair grace, and a member that needs to
// refresh waits that grace first, even one that started after the failover
// and saw no outage. The next write stamps the new ID. The check needs
// +info (see Security).
//
// # Sealing
//
// Tokens at rest are secrets. Without options the payload is plain JSON,
// readable by anyone who can read the key. WithSealKey seals it with AES-GCM
// from the standard library under the caller's 128-, 192- or 256-bit key,
// with a random nonce per write and the record's full key name as additional
// data: Redis, its replicas, backups and RDB files then hold only
// ciphertext, and a sealed record copied under another key does not open.
// A record that does not open (another key, tampering, a plain record while
// a key is set, a sealed one while none is) fails with ErrSealMismatch;
// previous keys given to WithSealKey allow rotation. Sealing protects the
// token from readers of Redis, not from writers: anyone who can write the
// key can still delete it or block the lease, so restrict writes with ACLs
// as well.
//
// # Security
//
// Authentication, ACLs and TLS come through the caller's client; the Store
// adds nothing and needs nothing else. A least-privilege ACL user for key
// "token" with prefix "svc-a:", used over TLS:
//
//	ACL SETUSER svc-a on >PASSWORD resetkeys ~svc-a:* resetchannels &svc-a:* -@all
//	    +evalsha +eval +hmget +hget +exists +subscribe +info
//	    +get +set +pexpire +del +hset +hdel +hincrby +publish
//
//	rdb := redis.NewClient(&redis.Options{
//		Addr:                  "redis.internal:6380",
//		Username:              "svc-a",
//		Password:              os.Getenv("REDIS_PASSWORD"),
//		TLSConfig:             &tls.Config{MinVersion: tls.VersionTLS12, ServerName: "redis.internal"},
//		ContextTimeoutEnabled: true,
//	})
//
// Commands called from scripts are checked against the ACL too, hence the
// second line; AUTH and HELLO need no rule. +info lets the lease script
// tell a record written before a failover or a restart (see Replicas and
// failover);
// without it that check is skipped, and Redis logs the denial in ACL LOG.
// WithReplicaAck needs +info and +wait, and a Cluster client +cluster|slots (go-redis reads the
// slot map with CLUSTER SLOTS). With a Cluster client on a key without a
// hash tag, the patterns are unchanged: "svc-a:{token}" matches ~svc-a:*. On Redis 7.2 and newer go-redis
// also sends CLIENT SETINFO when it connects and ignores a denial; add
// +client|setinfo to let it name itself. The package's tests run with
// exactly these rules. No error or log line of this package contains a
// token: decoding errors describe the problem without quoting the record,
// and Redis and go-redis do not put command arguments in their errors.
//
// # When Redis is down
//
// Every operation that cannot reach Redis (dial errors, timeouts, a broken
// connection, redis.ErrClosed, a server that is loading or failing over)
// fails with an error matching tokensource.ErrCoordinatorUnavailable that
// also wraps the cause; replies that mean misconfiguration (a wrong password,
// NOPERM, WRONGTYPE) do not match it. What a Source does then:
// members with a valid token go on serving it without noticing; a member
// whose token expired does not refresh without the lease, because two members
// presenting one rotating refresh token look like token theft to an
// authorization server with reuse detection, and its callers fail with a
// clear Unavailable cause. tokensource.WithUncoordinatedRefresh allows local
// refreshes for grants where that is safe (client credentials).
//
// A holder whose lease renewal fails keeps refreshing and renews again at the
// next tick; if the lease expired meanwhile its Commit succeeds unless another
// member took over. After a restart without persistence the record and the
// lease are gone: a holder's Commit is then refused (its version no longer
// matches), waiters are woken by their resubscription and re-read, and the
// fleet starts over from the tokens its members hold (Restore puts the
// newest back at its version). The Store itself needs no reconnecting:
// go-redis does it. One go-redis behaviour shows in recovery times: after
// PoolSize failed dials in a row, a client's pool stops dialling and
// returns the last dial error at once, probing once a second until a dial
// succeeds (redis/go-redis#3062). A member whose pool got there during an
// outage fails its token refreshes with that error, naming the old
// address, for up to a second after Redis answers again; a larger PoolSize
// makes that rarer.
package redisstore

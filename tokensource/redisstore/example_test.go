package redisstore_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource/redisstore"
)

// Every replica of a service builds its Source on the same Redis key: they
// then make one refresh per expiry between them and never present a rotated
// refresh token twice. Authentication and TLS are the client's; the record is
// sealed with a key only the service holds.
func Example() {
	rdb := redis.NewClient(&redis.Options{
		Addr:      "redis.internal:6380",
		Username:  "svc-a",                     // an ACL user limited to ~svc-a:* and &svc-a:*
		Password:  os.Getenv("REDIS_PASSWORD"), // never in code
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, ServerName: "redis.internal"},
		// Let ctx deadlines bound Redis calls (go-redis ignores them otherwise).
		ContextTimeoutEnabled: true,
	})
	defer rdb.Close()

	sealKey := make([]byte, 32) // in production: 32 random bytes from a secret manager
	store := redisstore.New(rdb, "token",
		redisstore.WithKeyPrefix("svc-a:"),
		redisstore.WithSealKey(sealKey),
		redisstore.WithLeaseTTL(10*time.Second))

	refresher := tokensource.RefresherFunc(func(ctx context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
		// Exchange cur.RefreshToken at the authorization server.
		return &tokensource.Token{AccessToken: "new", RefreshToken: "rotated", Expiry: time.Now().Add(time.Hour)}, nil
	})
	src := tokensource.New(refresher, tokensource.WithStore(store))
	defer src.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := src.Token(ctx); err != nil {
		fmt.Println("no token:", err)
	}
}

// A Store can be used directly as a tokensource.Coordinator: take the lease,
// refresh the record's token, commit it for the fleet; or, when a peer holds
// the lease, wait for its commit.
func ExampleStore_TryLease() {
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379", ContextTimeoutEnabled: true})
	defer rdb.Close()
	store := redisstore.New(rdb, "token")
	ctx := context.Background()

	lease, err := store.TryLease(ctx)
	switch {
	case err != nil:
		fmt.Println(err) // matches tokensource.ErrCoordinatorUnavailable if Redis is down
	case lease == nil:
		rec, _ := store.LoadRecord(ctx)
		_ = store.Wait(ctx, rec.Version) // then read the record again
	default:
		next := &tokensource.Token{AccessToken: "new", Expiry: time.Now().Add(time.Hour)}
		if err := lease.Commit(ctx, next); err != nil {
			fmt.Println(err) // matches tokensource.ErrLeaseLost if a peer committed first
		}
	}
}

// On Sentinel, a commit is handed out only once a replica has it, so that a
// failover to that replica cannot roll the fleet's newest refresh token back.
// With no replica left, commits do not wait.
func ExampleWithReplicaAck() {
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:            "mymaster",
		SentinelAddrs:         []string{"sentinel-1:26379", "sentinel-2:26379", "sentinel-3:26379"},
		ContextTimeoutEnabled: true,
	})
	defer rdb.Close()
	store := redisstore.New(rdb, "token", redisstore.WithKeyPrefix("svc-a:"),
		redisstore.WithReplicaAck(1, 100*time.Millisecond))
	src := tokensource.New(tokensource.RefresherFunc(func(ctx context.Context, cur *tokensource.Token) (*tokensource.Token, error) {
		return nil, fmt.Errorf("exchange cur.RefreshToken here")
	}), tokensource.WithStore(store))
	defer src.Close()
}

// On a Redis Cluster the key needs no hash tag: the Store adds one, so that
// the record, its lease and its channel share a slot.
func ExampleNew_cluster() {
	rdb := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                 []string{"redis-1:6379", "redis-2:6379", "redis-3:6379"},
		ContextTimeoutEnabled: true,
	})
	defer rdb.Close()
	store := redisstore.New(rdb, "token", redisstore.WithKeyPrefix("svc-a:"))
	fmt.Println(store.Key())
	// Output: svc-a:{token}
}

package redisstore

import (
	"errors"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// aclRules is the least-privilege rule set of the package documentation for
// a Store with key "svc-a:token" (minus the ">password" and "on").
const aclRules = "resetkeys ~svc-a:* resetchannels &svc-a:* -@all " +
	"+evalsha +eval +hmget +hget +exists +subscribe +info " +
	"+get +set +pexpire +del +hset +hdel +hincrby +publish"

func TestACLUser(t *testing.T) {
	ctx := testContext(t)
	client := aclUser(t, aclRules)
	a := New(client("svc-a", "svc-a-password"), "token", WithKeyPrefix("svc-a:"), WithPollInterval(noPoll))
	b := New(client("svc-a", "svc-a-password"), "token", WithKeyPrefix("svc-a:"), WithPollInterval(noPoll))

	// Everything a fleet member does works with these rights.
	if err := a.Save(ctx, secretToken()); err != nil {
		t.Fatalf("Save as the ACL user: %v", err)
	}
	l := mustLease(t, ctx, a)
	done := startWait(ctx, b, l.Record().Version)
	want := secretToken()
	if err := l.Commit(ctx, want); err != nil {
		t.Fatalf("Commit as the ACL user: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Wait as the ACL user: %v", err)
	}
	if got := mustLoad(t, ctx, b); !sameToken(got.Token, want) {
		t.Fatalf("Load as the ACL user = %v; want %v", got.Token, want)
	}
	l = mustLease(t, ctx, b)
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release as the ACL user: %v", err)
	}

	// Outside its prefix the user is denied: a configuration error, not an
	// unavailable coordinator.
	_, err := New(client("svc-a", "svc-a-password"), "token", WithKeyPrefix("svc-b:")).LoadRecord(ctx)
	if err == nil || isUnavailable(err) || !redis.HasErrorPrefix(errors.Unwrap(err), "NOPERM") {
		t.Fatalf("LoadRecord outside the ACL's keys = %v; want NOPERM, not ErrCoordinatorUnavailable", err)
	}
	// A wrong password is a configuration error too.
	_, err = New(client("svc-a", "wrong"), "token", WithKeyPrefix("svc-a:")).LoadRecord(ctx)
	if err == nil || isUnavailable(err) {
		t.Fatalf("LoadRecord with a wrong password = %v; want an error that is not ErrCoordinatorUnavailable", err)
	}
	if errors.Is(err, tokensource.ErrLeaseLost) {
		t.Fatal("unexpected ErrLeaseLost")
	}
}

// Without +info the lease cannot see a record written under another
// replication history (see historyLua): the check is skipped, and
// everything else works.
func TestACLUserWithoutInfo(t *testing.T) {
	ctx := testContext(t)
	client := aclUser(t, strings.Replace(aclRules, " +info", "", 1))
	s := New(client("svc-a", "svc-a-password"), "token", WithKeyPrefix("svc-a:"))
	if err := s.Save(ctx, secretToken()); err != nil {
		t.Fatalf("Save without +info: %v", err)
	}
	for range 2 {
		l := mustLease(t, ctx, s)
		if l.Record().Restored {
			t.Fatal("lease without +info: Restored = true, want false")
		}
		if err := l.Commit(ctx, secretToken()); err != nil {
			t.Fatalf("Commit without +info: %v", err)
		}
	}
}

// aclUser starts a redis-server with user svc-a (password
// "svc-a-password") under rules, and the default user off, and returns a
// function that makes clients of it.
func aclUser(t *testing.T, rules string) func(user, password string) *redis.Client {
	t.Helper()
	srv := redistest.Start(t)
	ctx := testContext(t)
	admin := newClient(t, srv)
	args := []any{"ACL", "SETUSER", "svc-a", "reset", "on", ">svc-a-password"}
	for _, r := range strings.Fields(rules) {
		args = append(args, r)
	}
	if err := admin.Do(ctx, args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	// Nobody gets in without a password any more.
	if err := admin.Do(ctx, "ACL", "SETUSER", "default", "off").Err(); err != nil {
		t.Fatalf("ACL SETUSER default off: %v", err)
	}
	return func(user, password string) *redis.Client {
		opts := clientOptions(srv)
		opts.Username, opts.Password = user, password
		c := redis.NewClient(opts)
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
}

package redisstore

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

func TestEmptyStore(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	s := member(t, srv, "token")

	tok, err := s.Load(ctx)
	if err != nil || tok != nil {
		t.Fatalf("Load of an empty store = %v, %v; want nil, nil", tok, err)
	}
	if rec := mustLoad(t, ctx, s); rec.Token != nil || rec.Version != 0 {
		t.Fatalf("LoadRecord of an empty store = %+v; want the zero Record", rec)
	}
}

func TestSaveLoadBumpsVersion(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	a := member(t, srv, "token")
	b := member(t, srv, "token")

	var last uint64
	for i := range 3 {
		want := secretToken()
		if i == 2 {
			want.Expiry = time.Time{} // never expires: stored without an expiry
			want.RefreshToken = ""
		}
		if err := a.Save(ctx, want); err != nil {
			t.Fatalf("Save: %v", err)
		}
		rec := mustLoad(t, ctx, b)
		if !sameToken(rec.Token, want) {
			t.Fatalf("member b loaded %v; want %v", rec.Token, want)
		}
		if rec.Version <= last {
			t.Fatalf("version %d after a Save; want more than %d", rec.Version, last)
		}
		last = rec.Version
	}
	if err := a.Save(ctx, nil); err == nil {
		t.Fatal("Save(nil) succeeded")
	}
}

func TestKeysAndPrefixIsolation(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	a := member(t, srv, "token", WithKeyPrefix("svc-a:"))
	b := member(t, srv, "token", WithKeyPrefix("svc-b:"))

	ta := secretToken()
	if err := a.Save(ctx, ta); err != nil {
		t.Fatalf("Save: %v", err)
	}
	if rec := mustLoad(t, ctx, b); rec.Token != nil || rec.Version != 0 {
		t.Fatalf("prefix svc-b: sees %+v written under svc-a:", rec)
	}
	la := mustLease(t, ctx, a)
	lb := mustLease(t, ctx, b) // a's lease does not exclude b
	if err := lb.Commit(ctx, secretToken()); err != nil {
		t.Fatalf("b Commit: %v", err)
	}
	if err := la.Commit(ctx, secretToken()); err != nil {
		t.Fatalf("a Commit: %v (b's commit must not fence a)", err)
	}

	keys, err := newClient(t, srv).Keys(ctx, "*").Result()
	if err != nil {
		t.Fatalf("KEYS: %v", err)
	}
	slices.Sort(keys)
	if want := []string{"svc-a:token", "svc-b:token"}; !slices.Equal(keys, want) {
		t.Fatalf("keys in Redis = %q; want %q (leases are deleted by Commit)", keys, want)
	}
	if a.Key() != "svc-a:token" {
		t.Fatalf("Key() = %q", a.Key())
	}
}

func TestCorruptRecord(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	s := member(t, srv, "token")
	raw := newClient(t, srv)

	cases := []struct {
		name   string
		fields []any
	}{
		{"not JSON", []any{"version", "1", "payload", "SECRET-garbage"}},
		{"wrong type", []any{"version", "1", "payload", `{"format":1,"access_token":12}`}},
		{"other format", []any{"version", "1", "payload", `{"format":2,"access_token":"access-SECRET"}`}},
		{"no credential", []any{"version", "1", "payload", `{"format":1}`}},
		{"bad version", []any{"version", "SECRET", "payload", `{"format":1,"access_token":"access-SECRET"}`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := raw.Del(ctx, s.recordKey).Err(); err != nil {
				t.Fatal(err)
			}
			if err := raw.HSet(ctx, s.recordKey, c.fields...).Err(); err != nil {
				t.Fatal(err)
			}
			_, err := s.LoadRecord(ctx)
			if !errors.Is(err, ErrCorruptRecord) || !errors.Is(err, tokensource.ErrCorruptStore) {
				t.Fatalf("LoadRecord = %v; want ErrCorruptRecord and tokensource.ErrCorruptStore", err)
			}
			if isUnavailable(err) {
				t.Fatalf("a corrupt record must not look like an unavailable coordinator: %v", err)
			}
			noSecrets(t, err)
			// TryLease reads the record too; it must fail and leave no lease.
			if _, err := s.TryLease(ctx); !errors.Is(err, ErrCorruptRecord) {
				t.Fatalf("TryLease = %v; want ErrCorruptRecord", err)
			}
			if n := raw.Exists(ctx, s.leaseKey).Val(); n != 0 {
				t.Fatal("a failed TryLease left its lease behind")
			}
		})
	}
}

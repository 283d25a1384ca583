package redisstore

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest"
	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

func sealKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

// rawRecord returns every field of the record hash as stored in Redis.
func rawRecord(t *testing.T, srv *redistest.Server, s *Store) map[string]string {
	t.Helper()
	m, err := newClient(t, srv).HGetAll(testContext(t), s.recordKey).Result()
	if err != nil {
		t.Fatalf("HGETALL: %v", err)
	}
	return m
}

func TestSealRoundTrip(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	a := member(t, srv, "token", WithSealKey(sealKey(1)))
	b := member(t, srv, "token", WithSealKey(sealKey(1)))

	saved := secretToken()
	if err := a.Save(ctx, saved); err != nil {
		t.Fatalf("Save: %v", err)
	}
	if got := mustLoad(t, ctx, b); !sameToken(got.Token, saved) {
		t.Fatalf("Load = %v; want %v", got.Token, saved)
	}
	l := mustLease(t, ctx, b)
	if !sameToken(l.Record().Token, saved) {
		t.Fatalf("Lease.Record() = %v; want %v", l.Record().Token, saved)
	}
	committed := secretToken()
	if err := l.Commit(ctx, committed); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if got := mustLoad(t, ctx, a); !sameToken(got.Token, committed) {
		t.Fatalf("Load = %v; want %v", got.Token, committed)
	}

	for field, v := range rawRecord(t, srv, a) {
		for _, secret := range []string{committed.AccessToken, committed.RefreshToken, "SECRET"} {
			if strings.Contains(v, secret) {
				t.Fatalf("field %q of the sealed record contains %q in the clear", field, secret)
			}
		}
	}
	if p := rawRecord(t, srv, a)["payload"]; !strings.HasPrefix(p, sealedPrefix) {
		t.Fatal("the payload is not marked as sealed")
	}

	// Two seals of one token differ (random nonce).
	if err := a.Save(ctx, committed); err != nil {
		t.Fatal(err)
	}
	first := rawRecord(t, srv, a)["payload"]
	if err := a.Save(ctx, committed); err != nil {
		t.Fatal(err)
	}
	if first == rawRecord(t, srv, a)["payload"] {
		t.Fatal("two seals of the same token are identical: the nonce is not random")
	}
}

func TestPlainRecordIsJSON(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	s := member(t, srv, "token")
	if err := s.Save(ctx, secretToken()); err != nil {
		t.Fatal(err)
	}
	if p := rawRecord(t, srv, s)["payload"]; !strings.HasPrefix(p, `{"format":1,`) {
		t.Fatalf("an unsealed payload is not the documented JSON: starts %.12q", p)
	}
}

func TestSealMismatch(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	sealed := member(t, srv, "sealed", WithSealKey(sealKey(1)))
	plain := member(t, srv, "plain")
	if err := sealed.Save(ctx, secretToken()); err != nil {
		t.Fatal(err)
	}
	if err := plain.Save(ctx, secretToken()); err != nil {
		t.Fatal(err)
	}

	check := func(name string, s *Store) {
		t.Helper()
		_, err := s.LoadRecord(ctx)
		if !errors.Is(err, ErrSealMismatch) || !errors.Is(err, tokensource.ErrCorruptStore) {
			t.Fatalf("%s: LoadRecord = %v; want ErrSealMismatch and tokensource.ErrCorruptStore", name, err)
		}
		if isUnavailable(err) {
			t.Fatalf("%s: a seal mismatch must not look like an unavailable coordinator: %v", name, err)
		}
		noSecrets(t, err)
		if _, err := s.TryLease(ctx); !errors.Is(err, ErrSealMismatch) {
			t.Fatalf("%s: TryLease = %v; want ErrSealMismatch", name, err)
		}
	}
	check("wrong key", member(t, srv, "sealed", WithSealKey(sealKey(2))))
	check("wrong key size", member(t, srv, "sealed", WithSealKey(sealKey(1)[:16])))
	check("sealed record, no key", member(t, srv, "sealed"))
	check("plain record, with a key", member(t, srv, "plain", WithSealKey(sealKey(1))))

	// A sealed record copied under another key name does not open there.
	raw := rawRecord(t, srv, sealed)
	if err := newClient(t, srv).HSet(ctx, "copy", "version", raw["version"], "payload", raw["payload"]).Err(); err != nil {
		t.Fatal(err)
	}
	check("copied to another key", member(t, srv, "copy", WithSealKey(sealKey(1))))

	// A modified ciphertext does not open.
	p := []byte(raw["payload"])
	p[len(p)-1] ^= 1
	if err := newClient(t, srv).HSet(ctx, "sealed", "payload", p).Err(); err != nil {
		t.Fatal(err)
	}
	check("tampered", member(t, srv, "sealed", WithSealKey(sealKey(1))))
}

func TestSealKeyRotation(t *testing.T) {
	srv := redistest.Start(t)
	ctx := testContext(t)
	old := member(t, srv, "token", WithSealKey(sealKey(1)))
	tok := secretToken()
	if err := old.Save(ctx, tok); err != nil {
		t.Fatal(err)
	}
	rotated := member(t, srv, "token", WithSealKey(sealKey(2), sealKey(1)))
	if got := mustLoad(t, ctx, rotated); !sameToken(got.Token, tok) {
		t.Fatalf("a Store with the old key as previous key reads %v; want %v", got.Token, tok)
	}
	l := mustLease(t, ctx, rotated)
	next := secretToken()
	if err := l.Commit(ctx, next); err != nil {
		t.Fatal(err)
	}
	if got := mustLoad(t, ctx, member(t, srv, "token", WithSealKey(sealKey(2)))); !sameToken(got.Token, next) {
		t.Fatalf("the new key alone reads %v; want %v (written with the new key)", got.Token, next)
	}
	if _, err := old.LoadRecord(ctx); !errors.Is(err, ErrSealMismatch) {
		t.Fatalf("the old key alone = %v; want ErrSealMismatch", err)
	}
}

func TestInvalidSealKeyPanics(t *testing.T) {
	srv := redistest.Start(t)
	c := newClient(t, srv)
	for _, key := range [][]byte{nil, make([]byte, 15), make([]byte, 33)} {
		func() {
			defer func() {
				r := recover()
				if r == nil {
					t.Fatalf("New with a %d-byte seal key did not panic", len(key))
				}
				if !strings.Contains(r.(string), "16, 24 or 32") {
					t.Fatalf("panic %q does not say which sizes are valid", r)
				}
			}()
			New(c, "token", WithSealKey(key))
		}()
	}
}

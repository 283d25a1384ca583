package redisstore

import (
	"context"
	"errors"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// Store is a tokensource.Store kept in Redis that coordinates the Sources of
// a fleet: it implements tokensource.Coordinator. It is safe for concurrent
// use by any number of Sources and goroutines, in any number of processes
// that use the same key. A Store starts no goroutine of its own except while
// a lease is held (its renewal) and while someone waits in Wait (the shared
// subscription), so it needs no Close; the caller owns and closes the client.
type Store struct {
	client    redis.UniversalClient
	recordKey string
	leaseKey  string
	channel   string
	opts      options
	notify    notifier
}

var _ tokensource.Coordinator = (*Store)(nil)

// New returns a Store for the record named key (with WithKeyPrefix's prefix
// in front) on client. Nothing is sent to Redis until the first call. The
// keys are described in the package documentation; on a Cluster (or Ring)
// client a key without a hash tag of its own gets one, so that the record,
// the lease and the channel share a slot. New panics if client is nil, key
// is empty, WithSealKey was given a key of the wrong size, no hash tag can
// keep the names in one slot, or WithReplicaAck cannot be honoured by client
// (see WithReplicaAck): each is a configuration error that must not degrade
// into running uncoordinated, unsealed or unacknowledged.
func New(client redis.UniversalClient, key string, opts ...Option) *Store {
	if client == nil {
		panic("redisstore: New: nil client")
	}
	if key == "" {
		panic("redisstore: New: empty key")
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if o.sealErr != "" {
		panic(o.sealErr)
	}
	base, ok := keyNames(client, o.prefix, key)
	if !ok {
		panic("redisstore: New: the record " + strconv.Quote(base) + ", its lease and its channel would not share a " +
			"Redis Cluster slot: the braces in the prefix defeat the hash tag; put a non-empty hash tag in the prefix " +
			"or the key, for example WithKeyPrefix(\"{svc-a}:\")")
	}
	if msg := checkReplicaAck(client, o.ack); msg != "" {
		panic(msg)
	}
	s := &Store{
		client:    client,
		recordKey: base,
		leaseKey:  base + leaseSuffix,
		channel:   base + channelSuffix,
		opts:      o,
	}
	s.notify.store = s
	return s
}

// Key returns the name of the record's key; the lease is Key()+":lease" and
// the notification channel Key()+":events". It is prefix+key, or on a
// Cluster client prefix+"{"+key+"}" when prefix+key has no hash tag.
func (s *Store) Key() string { return s.recordKey }

// Load returns the shared token, or (nil, nil) when none is stored. See
// LoadRecord for the errors.
func (s *Store) Load(ctx context.Context) (*tokensource.Token, error) {
	rec, err := s.LoadRecord(ctx)
	return rec.Token, err
}

// Save stores t unconditionally (a login through Source.SetToken is newer
// than anything stored), bumps the version and wakes waiters. A lease holder
// that read the previous version can no longer commit over it. Errors from
// Redis match tokensource.ErrCoordinatorUnavailable when Redis could not be
// reached. With WithReplicaAck, waiters are woken only once replicas
// acknowledged the write, and an error matching ErrNotReplicated (and
// tokensource.ErrCoordinatorUnavailable) means the token is written on the
// master but not known to be on the replicas.
func (s *Store) Save(ctx context.Context, t *tokensource.Token) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if t == nil {
		return errNilToken
	}
	data, err := s.encode(t)
	if err != nil {
		return err
	}
	const op = "saving the token"
	w, err := s.writer(ctx)
	if err != nil {
		return s.fail(ctx, op, err)
	}
	defer w.close()
	nv, err := saveScript.Run(ctx, w.conn, []string{s.recordKey}, data, s.channel, w.publishInScript()).Int64()
	if err != nil {
		return s.fail(ctx, op, err)
	}
	return w.acknowledge(ctx, op, strconv.FormatInt(nv, 10))
}

// LoadRecord returns the shared token, its version and whether Restore put it
// there (Record.Restored) with one round trip.
// A record that cannot be decoded yields an error matching ErrCorruptRecord
// or ErrSealMismatch (and tokensource.ErrCorruptStore); a failure to reach
// Redis one matching tokensource.ErrCoordinatorUnavailable.
func (s *Store) LoadRecord(ctx context.Context) (tokensource.Record, error) {
	if err := ctx.Err(); err != nil {
		return tokensource.Record{}, err
	}
	vals, err := s.client.HMGet(ctx, s.recordKey, "version", "payload", "restored").Result()
	if err != nil {
		return tokensource.Record{}, s.fail(ctx, "loading the record", err)
	}
	version, _ := vals[0].(string)
	payload, _ := vals[1].(string)
	restored, _ := vals[2].(string)
	return s.record(version, payload, restored)
}

// record decodes the version, payload and restored fields ("" when absent).
// Only Restore writes the restored field, as "1"; any other value counts as
// not restored rather than as corruption, so that the flag never keeps a
// member from the token.
func (s *Store) record(version, payload, restored string) (tokensource.Record, error) {
	rec := tokensource.Record{Restored: restored == "1"}
	if version != "" {
		v, err := strconv.ParseUint(version, 10, 64)
		if err != nil {
			return tokensource.Record{}, s.recordErr(ErrCorruptRecord, "the version field is not an unsigned integer")
		}
		rec.Version = v
	}
	if payload == "" {
		return rec, nil
	}
	t, err := s.decode([]byte(payload))
	if err != nil {
		return tokensource.Record{}, err
	}
	rec.Token = t
	return rec, nil
}

// probe reads what Wait watches: the version and whether a lease is live.
func (s *Store) probe(ctx context.Context) (version uint64, leased bool, err error) {
	var vcmd *redis.StringCmd
	var ecmd *redis.IntCmd
	_, _ = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		vcmd = p.HGet(ctx, s.recordKey, "version")
		ecmd = p.Exists(ctx, s.leaseKey)
		return nil
	})
	v, verr := vcmd.Result()
	if verr != nil && !errors.Is(verr, redis.Nil) {
		return 0, false, s.fail(ctx, "reading the record's version", verr)
	}
	if err := ecmd.Err(); err != nil {
		return 0, false, s.fail(ctx, "reading the lease", err)
	}
	if verr == nil {
		if version, err = strconv.ParseUint(v, 10, 64); err != nil {
			return 0, false, s.recordErr(ErrCorruptRecord, "the version field is not an unsigned integer")
		}
	}
	return version, ecmd.Val() > 0, nil
}

package redisstore

import (
	"crypto/aes"
	"crypto/cipher"
	"log/slog"
	"strconv"
	"time"
)

// Defaults of the options.
const (
	// DefaultLeaseTTL is the lease lifetime without WithLeaseTTL: a crashed
	// or paused holder delays the fleet by at most this much, and the live
	// holder renews every third of it, so two lost renewals in a row (or a
	// GC pause of several seconds) do not cost it the lease.
	DefaultLeaseTTL = 10 * time.Second
	// DefaultPollInterval is the timed re-read of Wait without
	// WithPollInterval. Pub/sub normally wakes waiters within a
	// millisecond; the re-read only bounds the delay after a lost
	// notification (a pub/sub connection that broke, say).
	DefaultPollInterval = 250 * time.Millisecond
)

// Option configures a Store.
type Option func(*options)

type options struct {
	prefix  string
	ttl     time.Duration
	poll    time.Duration
	seal    []cipher.AEAD // seal[0] seals; all of them open
	sealErr string        // a bad WithSealKey; New panics with it
	logger  *slog.Logger
	ack     *replicaAck // WithReplicaAck; nil when off
}

func defaultOptions() options {
	return options{
		ttl:    DefaultLeaseTTL,
		poll:   DefaultPollInterval,
		logger: slog.New(slog.DiscardHandler),
	}
}

// WithLeaseTTL sets the lifetime of the refresh lease (DefaultLeaseTTL, 10 s,
// when d <= 0; rounded up to whole milliseconds). The holder renews it every
// d/3 while its Refresher runs, so d bounds how long a holder that died or
// stopped (SIGSTOP, a long GC pause, a partition) delays the others, not how
// long a refresh may take. Keep it well above the network's worst round trip
// and the longest pause you expect of a live process.
func WithLeaseTTL(d time.Duration) Option {
	return func(o *options) {
		if d <= 0 {
			d = DefaultLeaseTTL
		}
		// PX takes whole milliseconds; round up, never down to zero.
		if r := d % time.Millisecond; r != 0 {
			d += time.Millisecond - r
		}
		o.ttl = d
	}
}

// WithKeyPrefix puts prefix in front of every key and channel name the Store
// uses (none by default), so that applications sharing a Redis database stay
// apart and an ACL can grant exactly one namespace (see the package
// documentation). With a prefix "svc-a:" and key "token", the record is
// "svc-a:token".
func WithKeyPrefix(prefix string) Option {
	return func(o *options) { o.prefix = prefix }
}

// WithPollInterval sets how often Wait re-reads the record when no
// notification arrives (DefaultPollInterval, 250 ms, when d <= 0). It bounds
// the delay after a lost notification; a shorter interval costs one more
// round trip per waiting Source per interval.
func WithPollInterval(d time.Duration) Option {
	return func(o *options) {
		if d <= 0 {
			d = DefaultPollInterval
		}
		o.poll = d
	}
}

// WithSealKey seals the record with AES-GCM (crypto/aes, crypto/cipher) under
// key, which must be 16, 24 or 32 bytes (AES-128, -192, -256); New panics
// otherwise, so a misconfigured key stops a service at start instead of
// running unsealed. Records are opened with key or any of previous, which
// lets a fleet rotate keys: deploy WithSealKey(newKey, oldKey) everywhere,
// and the next write is sealed with newKey.
//
// Each write uses a random 96-bit nonce. The record's full key name is bound
// as additional data, so a sealed record copied under another key does not
// open. A Store with a seal key refuses a record that is not sealed, and a
// Store without one refuses a sealed record: both fail with an error matching
// ErrSealMismatch, which never contains the record. The keys are copied.
// Without WithSealKey records are stored as plain JSON.
func WithSealKey(key []byte, previous ...[]byte) Option {
	return func(o *options) {
		o.seal, o.sealErr = nil, ""
		for i, k := range append([][]byte{key}, previous...) {
			blk, err := aes.NewCipher(append([]byte(nil), k...))
			if err != nil {
				o.sealErr = "redisstore: WithSealKey: key " + strconv.Itoa(i) + " has " +
					strconv.Itoa(len(k)) + " bytes; AES keys have 16, 24 or 32"
				o.seal = nil
				return
			}
			aead, err := cipher.NewGCM(blk)
			if err != nil {
				o.sealErr = "redisstore: WithSealKey: " + err.Error()
				o.seal = nil
				return
			}
			o.seal = append(o.seal, aead)
		}
	}
}

// WithLogger makes the Store log lease renewal failures and a lost lease at
// Warn, and pub/sub reconnections at Debug. Tokens are never logged. The
// default discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l == nil {
			l = slog.New(slog.DiscardHandler)
		}
		o.logger = l
	}
}

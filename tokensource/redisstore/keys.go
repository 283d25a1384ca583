package redisstore

import (
	"strings"

	"github.com/redis/go-redis/v9"
)

// Suffixes of the lease key and the notification channel after the record's
// name.
const (
	leaseSuffix   = ":lease"
	channelSuffix = ":events"
)

// keyNames returns the names of the record, the lease and the channel for
// prefix+key. On a client that spreads keys over shards (a Cluster or a
// Ring), the three must hash alike, or the scripts that touch the record and
// the lease together fail with CROSSSLOT: when the caller's name has no hash
// tag of its own, the key part is wrapped in one (prefix+"{"+key+"}"), which
// keeps the prefix in front for ACL key patterns. A single server or a
// Sentinel-managed one keeps the names unchanged, so that fleets that ran an
// earlier version keep their record. ok is false when no name can be made to
// hash alike (a prefix whose own braces defeat the tag); New then panics.
func keyNames(client redis.UniversalClient, prefix, key string) (record string, ok bool) {
	record = prefix + key
	if !sharded(client) || sameSlot(record) {
		return record, true
	}
	record = prefix + "{" + key + "}"
	return record, sameSlot(record)
}

// sharded reports whether client routes keys to shards by their hash slot.
func sharded(client redis.UniversalClient) bool {
	switch client.(type) {
	case *redis.ClusterClient, *redis.Ring:
		return true
	}
	return false
}

// sameSlot reports whether the record, its lease and its channel hash to one
// slot: Redis hashes only the part of a name that it hashes (hashedPart), so
// equal parts are equal slots, without computing a CRC.
func sameSlot(record string) bool {
	h := hashedPart(record)
	return h == hashedPart(record+leaseSuffix) && h == hashedPart(record+channelSuffix)
}

// hashedPart returns the part of name that Redis Cluster hashes to pick its
// slot: the content of the first "{...}" when it is not empty (the hash
// tag), otherwise the whole name.
func hashedPart(name string) string {
	open := strings.IndexByte(name, '{')
	if open < 0 {
		return name
	}
	end := strings.IndexByte(name[open+1:], '}')
	if end <= 0 {
		return name
	}
	return name[open+1 : open+1+end]
}

package redisstore

import (
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestHashedPart(t *testing.T) {
	for name, want := range map[string]string{
		"token":           "token",
		"{svc}:token":     "svc",
		"svc:{token}:x":   "token",
		"a{}b:{token}":    "a{}b:{token}", // an empty tag: the whole name
		"a{b":             "a{b",
		"a{b}{c}":         "b",
		"{{token}:lease":  "{token",
		"svc-a:{tok}en}x": "tok",
	} {
		if got := hashedPart(name); got != want {
			t.Errorf("hashedPart(%q) = %q; want %q", name, got, want)
		}
	}
}

// TestKeyNames: a Cluster client gets a hash tag around the key when the
// name has none, after the prefix (so ACL key patterns on the prefix still
// match); a name with its own tag, and any name on a single-server client,
// is left as it is; a prefix whose braces defeat every tag makes New panic
// with the fix in its message.
func TestKeyNames(t *testing.T) {
	cluster := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	defer cluster.Close()
	single := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer single.Close()
	for _, c := range []struct {
		client      redis.UniversalClient
		prefix, key string
		want        string
	}{
		{cluster, "", "token", "{token}"},
		{cluster, "svc-a:", "token", "svc-a:{token}"},
		{cluster, "{svc-a}:", "token", "{svc-a}:token"},
		{cluster, "", "{svc-a}:token", "{svc-a}:token"},
		{cluster, "a{", "token", "a{{token}"},
		{single, "svc-a:", "token", "svc-a:token"},
		{single, "", "token", "token"},
	} {
		s := New(c.client, c.key, WithKeyPrefix(c.prefix))
		if s.Key() != c.want {
			t.Errorf("%T, prefix %q, key %q: Key() = %q; want %q", c.client, c.prefix, c.key, s.Key(), c.want)
		}
		if h := hashedPart(s.recordKey); c.client == cluster && (h != hashedPart(s.leaseKey) || h != hashedPart(s.channel)) {
			t.Errorf("%q, %q and %q hash apart", s.recordKey, s.leaseKey, s.channel)
		}
		if s.leaseKey != s.Key()+":lease" || s.channel != s.Key()+":events" {
			t.Errorf("lease %q, channel %q for record %q", s.leaseKey, s.channel, s.Key())
		}
	}
	defer func() {
		msg, _ := recover().(string)
		if !strings.Contains(msg, "hash tag") {
			t.Fatalf("New with a prefix that defeats the hash tag: panic %q; want one that names the fix", msg)
		}
	}()
	New(cluster, "token", WithKeyPrefix("a{}b:"))
}

package redisstore

import "github.com/redis/go-redis/v9"

// The record is a hash at KEYS[1] with the fields
//
//	version  an integer, bumped by every write (absent: 0)
//	payload  the token (absent: none stored yet)
//	holder   the owner of the lease granted last and not yet ended by a
//	         Commit or Release of that owner
//	restored "1" when Restore wrote payload and no Save or Commit has
//	         written since (Record.Restored; absent: false)
//	history  the server's replication ID (INFO replication's
//	         master_replid) when the record was last written (absent:
//	         unknown, the ACL denies INFO)
//
// The lease is a string at KEYS[2] holding its owner, with a PX expiry. The
// scripts run atomically in Redis, which is what makes the lease exclusive
// and the commit fenced; redis.Script sends EVALSHA and falls back to EVAL
// when the server's script cache is empty (after a restart).

// historyLua defines history(), the replication ID of the server the
// script runs on: a promoted replica takes a new one, and so does a master
// that restarts. A record written under another history may have lost a
// later write that the old master took and the new one never received (a
// failover to a lagging replica): the acquire script reports it as
// restored, so that the next refresher waits for a member holding a newer
// token to put it back (Record.Restored). history() is empty when the ACL
// denies INFO; then the check is skipped.
const historyLua = `
if redis.replicate_commands then
	-- Redis 5 and 6 may replicate scripts verbatim, and then refuse a write
	-- after INFO; effects replication (Redis 7's only mode) takes both.
	redis.replicate_commands()
end
local function history()
	local ok, info = pcall(redis.call, 'INFO', 'replication')
	if not ok or type(info) ~= 'string' then
		return ''
	end
	return string.match(info, 'master_replid:(%w+)') or ''
end
local function stamp()
	local h = history()
	if h == '' then
		redis.call('HDEL', KEYS[1], 'history')
	else
		redis.call('HSET', KEYS[1], 'history', h)
	end
end
`

// acquireScript takes the lease if nobody holds it.
// ARGV: owner, ttl in ms. Returns nil when the lease is held; otherwise
// {taken over (0/1), version, payload, restored ('1' or '0')}. A recorded holder without a live
// lease key is one whose lease expired before it committed or released: a
// takeover. restored is also '1' when the record was written under another
// history than the server's (see historyLua).
//
// The script is idempotent for its owner, because go-redis retries a command
// whose reply was lost: a retry finds its own lease and returns it instead of
// reporting the lease as held (by itself) until the TTL ends.
var acquireScript = redis.NewScript(historyLua + `
local cur = redis.call('GET', KEYS[2])
if cur and cur ~= ARGV[1] then
	return false
end
local prev = redis.call('HGET', KEYS[1], 'holder')
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[1], 'holder', ARGV[1])
local r = redis.call('HMGET', KEYS[1], 'version', 'payload', 'restored', 'history')
local taken = 0
if prev and prev ~= ARGV[1] then taken = 1 end
local restored = r[3] or '0'
if r[4] then
	local h = history()
	if h ~= '' and h ~= r[4] then restored = '1' end
end
return {taken, r[1] or '0', r[2] or '', restored}
`)

// renewScript extends the lease if it is still ours.
// ARGV: owner, ttl in ms. Returns 1 when renewed, 0 when the lease is gone.
var renewScript = redis.NewScript(`
if redis.call('GET', KEYS[2]) == ARGV[1] then
	redis.call('PEXPIRE', KEYS[2], ARGV[2])
	return 1
end
return 0
`)

// commitScript is the fenced write: only if nobody else holds the lease
// (ours, or none at all: it expired or was released and nobody took it) and
// the version is still the one read with the lease.
// ARGV: owner, expected version, payload, channel, expected version + 1,
// and "0" to leave the announcement of the new version to the caller (who
// publishes once replicas acknowledged it). Returns {1, new version}, or
// {0, reason}. A commit refused for the version still deletes our lease. A
// retry of a commit that was applied (its reply lost) finds its own payload
// at the next version and succeeds again, rather than being refused by its
// own write; it rewrites the version field to itself so that a WAIT after
// the retry also covers the first attempt's write. Either way a successful
// commit leaves the record unmarked as restored: if a Restore put the same
// payload back at that version meanwhile, the commit it was waiting for has
// landed.
var commitScript = redis.NewScript(historyLua + `
local cur = redis.call('GET', KEYS[2])
if cur and cur ~= ARGV[1] then
	return {0, 'held'}
end
local v = redis.call('HGET', KEYS[1], 'version') or '0'
if v == ARGV[5] and redis.call('HGET', KEYS[1], 'payload') == ARGV[3] then
	redis.call('HSET', KEYS[1], 'version', v)
	redis.call('HDEL', KEYS[1], 'restored')
	stamp()
	return {1, v}
end
if v ~= ARGV[2] then
	-- Refused, but the lease ends here all the same: waiters need not
	-- wait out its TTL.
	if cur then
		redis.call('DEL', KEYS[2])
		redis.call('PUBLISH', ARGV[4], 'released')
	end
	if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
		redis.call('HDEL', KEYS[1], 'holder')
	end
	return {0, 'version'}
end
local nv = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'payload', ARGV[3])
redis.call('HDEL', KEYS[1], 'restored')
stamp()
if cur then
	redis.call('DEL', KEYS[2])
end
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
	redis.call('HDEL', KEYS[1], 'holder')
end
if ARGV[6] ~= '0' then
	redis.call('PUBLISH', ARGV[4], nv)
end
return {1, nv}
`)

// releaseScript gives up the lease if it is still ours, and forgets us as the
// holder (so that the next member does not report a takeover).
// ARGV: owner, channel. Returns 1 when a live lease was deleted.
var releaseScript = redis.NewScript(`
local n = 0
if redis.call('GET', KEYS[2]) == ARGV[1] then
	redis.call('DEL', KEYS[2])
	n = 1
end
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
	redis.call('HDEL', KEYS[1], 'holder')
end
if n == 1 then
	redis.call('PUBLISH', ARGV[2], 'released')
end
return n
`)

// saveScript is the unconditional write of Store.Save. It leaves the lease
// alone; the version bump refuses the holder's commit. The record it writes
// is not restored.
// ARGV: payload, channel, "0" to leave the announcement to the caller.
// Returns the new version.
var saveScript = redis.NewScript(historyLua + `
local nv = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'payload', ARGV[1])
redis.call('HDEL', KEYS[1], 'restored')
stamp()
if ARGV[3] ~= '0' then
	redis.call('PUBLISH', ARGV[2], nv)
end
return nv
`)

// restoreScript is the fenced maximum of Store.Restore: it writes the payload
// at the given version, marked restored, only if the record's version is
// lower (absent: 0), whoever holds the lease, and leaves the lease and its holder alone, so the
// holder's commit is refused by the version it no longer matches.
// ARGV: version (decimal, no leading zeros), payload, channel, "0" to leave
// the announcement to the caller. Returns 1 when written, 0 when the record
// was at that version or higher, -1 when its version field is not a number.
// Versions are compared as decimal strings (length first), which holds for
// every uint64 where Lua's doubles would not. When it does not write, it
// rewrites the version field to itself, so that a WAIT after it also covers
// whichever write put the record there (an unacknowledged commit re-offered
// by Restore is acknowledged by that WAIT); it leaves the restored mark as
// it was. A retry of a restore that was applied finds its own version and
// returns 0, the mark set by the first attempt.
var restoreScript = redis.NewScript(historyLua + `
local cur = redis.call('HGET', KEYS[1], 'version') or '0'
if not string.match(cur, '^[0-9]+$') then
	return -1
end
local want = ARGV[1]
if #cur > #want or (#cur == #want and cur >= want) then
	if redis.call('EXISTS', KEYS[1]) == 1 then
		redis.call('HSET', KEYS[1], 'version', cur)
	end
	return 0
end
redis.call('HSET', KEYS[1], 'version', want, 'payload', ARGV[2], 'restored', '1')
stamp()
if ARGV[4] ~= '0' then
	redis.call('PUBLISH', ARGV[3], want)
end
return 1
`)

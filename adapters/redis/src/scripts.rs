//! The Lua scripts: each store operation is one atomic round trip.
//!
//! A key is a hash with `state` (`in_progress`, `idle`, `completed`,
//! `dead_lettered`), `owner` and `lease_until` (while in progress),
//! `failed_runs`, `replay` and `updated_at`. Times are milliseconds of the
//! Redis server's clock (`TIME`), so workers with skewed clocks agree. The
//! key's own expiry is the TTL: `lease + ttl` while in progress (an
//! abandoned lease is forgotten a TTL after it ran out), `ttl` once finished
//! or released.

use std::sync::LazyLock;

use redis::Script;

const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

const OWNED: &str = r"
local held = redis.call('HMGET', KEYS[1], 'state', 'owner')
if held[1] ~= 'in_progress' or held[2] ~= ARGV[1] then
  return 0
end
";

/// `KEYS[1]` key; `ARGV` owner, lease ms, replay, ttl ms.
/// Returns `{verdict, n}`: `acquired` with the failed runs, `busy` with the
/// lease's remaining ms, `completed`, `dead_lettered`.
const CLAIM: &str = r"
local owner = ARGV[1]
local lease = tonumber(ARGV[2])
local replay = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local e = redis.call('HMGET', KEYS[1], 'state', 'lease_until', 'failed_runs', 'replay')
local failed = 0
if e[1] then
  local seen = tonumber(e[4]) or 0
  local newer = replay > seen
  if e[1] == 'completed' then
    return {'completed', 0}
  end
  if e[1] == 'dead_lettered' and not newer then
    return {'dead_lettered', 0}
  end
  if e[1] == 'in_progress' then
    local lease_until = tonumber(e[2]) or 0
    if lease_until > now then
      return {'busy', lease_until - now}
    end
  end
  if not newer then
    failed = tonumber(e[3]) or 0
    replay = seen
  end
end
redis.call('HSET', KEYS[1], 'state', 'in_progress', 'owner', owner, 'lease_until', now + lease,
  'failed_runs', failed, 'replay', replay, 'updated_at', now)
redis.call('PEXPIRE', KEYS[1], lease + ttl)
return {'acquired', failed}
";

/// `KEYS[1]` key; `ARGV` owner, lease ms, ttl ms. Returns 1 if renewed.
const RENEW: &str = r"
local lease = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'lease_until', now + lease, 'updated_at', now)
redis.call('PEXPIRE', KEYS[1], lease + tonumber(ARGV[3]))
return 1
";

/// `KEYS[1]` key; `ARGV` owner, final state, ttl ms. Returns 1 if settled.
const FINISH: &str = r"
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated_at', now)
redis.call('HDEL', KEYS[1], 'owner', 'lease_until')
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
";

/// `KEYS[1]` key; `ARGV` owner, failed runs (empty: keep), ttl ms. Returns 1 if released.
const RELEASE: &str = r"
redis.call('HSET', KEYS[1], 'state', 'idle', 'updated_at', now)
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'failed_runs', tonumber(ARGV[2]))
end
redis.call('HDEL', KEYS[1], 'owner', 'lease_until')
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
";

fn script(parts: &[&str]) -> Script {
    Script::new(&parts.concat())
}

pub(crate) static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[NOW, CLAIM]));
pub(crate) static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[OWNED, NOW, RENEW]));
pub(crate) static FINISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[OWNED, NOW, FINISH]));
pub(crate) static RELEASE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&[OWNED, NOW, RELEASE]));

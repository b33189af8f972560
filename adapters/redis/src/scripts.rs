//! The Lua scripts: each store operation is one atomic round trip, and so
//! is each batch (one script over all its keys).
//!
//! A key is a hash with `state` (`in_progress`, `idle`, `completed`,
//! `dead_lettered`), `owner`, `fence` and `lease_until` (while in progress),
//! `failed_runs`, `replay` and `updated_at`, and while a dead letter is
//! pending (its write failed, [`Store::release_with_letter`](backstop::idempotency::Store::release_with_letter))
//! `letter_kind`, `letter_error`, `letter_attempts`, `letter_first` and
//! `letter_last` (milliseconds of the worker's clock) and `letter_replay`
//! (the redrive it belongs to; a claim of another one ignores it). Times
//! of leases are milliseconds of the
//! Redis server's clock (`TIME`), so workers with skewed clocks agree. The
//! key's own expiry is the TTL: `lease + ttl` while in progress (an
//! abandoned lease is forgotten a TTL after it ran out), `ttl` once finished
//! or released.
//!
//! Fencing: a claim's token is the larger of the key's last token + 1 and
//! the server clock in microseconds, so it grows across a key's lifetimes
//! too. The owner is stored as `<owner>@<fence>` and an operation is allowed
//! only if both the `fence` field and that suffix match: a takeover by a
//! worker of the earlier layout (which rewrites `owner` but knows no
//! `fence`) also fences the later worker out during a rolling upgrade.
//! Tokens travel as decimal text (`%.0f`): Lua's default number format would
//! round them.

use std::sync::LazyLock;

use redis::Script;

const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
";

/// `owned(key, fence)`: the key is in progress under exactly `fence` (text).
const OWNED: &str = r"
local function owned(key, fence)
  local held = redis.call('HMGET', key, 'state', 'fence', 'owner')
  if held[1] ~= 'in_progress' or held[2] ~= fence or not held[3] then
    return false
  end
  local tag = '@' .. fence
  return string.sub(held[3], -string.len(tag)) == tag
end
";

/// The fields of a pending letter.
const LETTER_FIELDS: &str = r"
local letter_fields = {'letter_kind', 'letter_error', 'letter_attempts', 'letter_first',
  'letter_last', 'letter_replay'}
";

/// `claim(key, owner, lease ms, replay, ttl ms)` →
/// `{verdict, n, fence, crashed, kind, error, attempts, first, last}`:
/// `acquired` with the failed runs, `letter_pending` with the failed runs
/// and the letter, `busy` with the lease's remaining ms, `completed`,
/// `dead_lettered`; the letter's fields are empty unless `letter_pending`.
const CLAIM_FN: &str = r"
local function claim(key, owner, lease, replay, ttl)
  local e = redis.call('HMGET', key, 'state', 'lease_until', 'failed_runs', 'replay', 'fence',
    'letter_kind', 'letter_replay')
  local failed = 0
  local crashed = 0
  local fence = now_us
  local pending = false
  if e[1] then
    local seen = tonumber(e[4]) or 0
    if e[1] == 'completed' then
      return {'completed', 0, '0', 0, '', '', '', '', ''}
    end
    if e[1] == 'dead_lettered' and replay ~= seen + 1 then
      return {'dead_lettered', 0, '0', 0, '', '', '', '', ''}
    end
    if e[1] == 'in_progress' then
      local lease_until = tonumber(e[2]) or 0
      if lease_until > now then
        return {'busy', lease_until - now, '0', 0, '', '', '', '', ''}
      end
      crashed = 1
    end
    if replay <= seen then
      failed = (tonumber(e[3]) or 0) + crashed
      replay = seen
      pending = e[6] and e[1] ~= 'dead_lettered' and tonumber(e[7]) == seen
    end
    if not pending and e[6] then
      redis.call('HDEL', key, unpack(letter_fields))
    end
    fence = math.max(fence, (tonumber(e[5]) or 0) + 1)
  end
  local f = string.format('%.0f', fence)
  redis.call('HSET', key, 'state', 'in_progress', 'owner', owner .. '@' .. f, 'fence', f,
    'lease_until', now + lease, 'failed_runs', failed, 'replay', replay, 'updated_at', now)
  redis.call('PEXPIRE', key, lease + ttl)
  if pending then
    local l = redis.call('HMGET', key, 'letter_kind', 'letter_error', 'letter_attempts',
      'letter_first', 'letter_last')
    return {'letter_pending', failed, f, 0, l[1], l[2] or '', l[3] or '0', l[4] or '0', l[5] or '0'}
  end
  return {'acquired', failed, f, crashed, '', '', '', '', ''}
end
";

/// `KEYS[1]` key; `ARGV` owner, lease ms, replay, ttl ms.
const CLAIM: &str = r"
return claim(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
";

/// `KEYS` keys; `ARGV` lease ms, ttl ms, then per key its owner and replay.
const CLAIM_MANY: &str = r"
local lease, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = claim(key, ARGV[2 * i + 1], lease, tonumber(ARGV[2 * i + 2]), ttl)
end
return out
";

/// `renew(key, fence, lease ms, ttl ms)` → 1 if renewed.
const RENEW_FN: &str = r"
local function renew(key, fence, lease, ttl)
  if not owned(key, fence) then
    return 0
  end
  redis.call('HSET', key, 'lease_until', now + lease, 'updated_at', now)
  redis.call('PEXPIRE', key, lease + ttl)
  return 1
end
";

/// `KEYS[1]` key; `ARGV` fence, lease ms, ttl ms.
const RENEW: &str = r"
return renew(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
";

/// `KEYS` keys; `ARGV` lease ms, ttl ms, then each key's fence.
const RENEW_MANY: &str = r"
local lease, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = renew(key, ARGV[i + 2], lease, ttl)
end
return out
";

/// `finish(key, fence, final state, ttl ms)` → 1 if settled.
const FINISH_FN: &str = r"
local function finish(key, fence, state, ttl)
  if not owned(key, fence) then
    return 0
  end
  redis.call('HSET', key, 'state', state, 'updated_at', now)
  redis.call('HDEL', key, 'owner', 'lease_until', unpack(letter_fields))
  redis.call('PEXPIRE', key, ttl)
  return 1
end
";

/// `KEYS[1]` key; `ARGV` fence, final state, ttl ms.
const FINISH: &str = r"
return finish(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]))
";

/// `KEYS` keys; `ARGV` final state, ttl ms, then each key's fence.
const FINISH_MANY: &str = r"
local state, ttl = ARGV[1], tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = finish(key, ARGV[i + 2], state, ttl)
end
return out
";

/// `KEYS[1]` key; `ARGV` fence, failed runs (empty: keep), ttl ms. Returns 1 if released.
const RELEASE: &str = r"
if not owned(KEYS[1], ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'idle', 'updated_at', now)
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'failed_runs', tonumber(ARGV[2]))
end
redis.call('HDEL', KEYS[1], 'owner', 'lease_until')
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
";

/// `KEYS[1]` key; `ARGV` fence, ttl ms, then the letter's kind, error text,
/// attempts, first and last failure (ms). Releases the lease with the
/// letter's attempts as failed runs and records the letter; 1 if recorded.
const DEFER_LETTER: &str = r"
if not owned(KEYS[1], ARGV[1]) then
  return 0
end
local replay = redis.call('HGET', KEYS[1], 'replay') or '0'
redis.call('HSET', KEYS[1], 'state', 'idle', 'updated_at', now, 'failed_runs', tonumber(ARGV[5]),
  'letter_kind', ARGV[3], 'letter_error', ARGV[4], 'letter_attempts', ARGV[5],
  'letter_first', ARGV[6], 'letter_last', ARGV[7], 'letter_replay', replay)
redis.call('HDEL', KEYS[1], 'owner', 'lease_until')
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
";

fn script(parts: &[&str]) -> Script {
    Script::new(&parts.concat())
}

pub(crate) static CLAIM_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&[NOW, LETTER_FIELDS, CLAIM_FN, CLAIM]));
pub(crate) static CLAIM_MANY_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&[NOW, LETTER_FIELDS, CLAIM_FN, CLAIM_MANY]));
pub(crate) static RENEW_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&[NOW, OWNED, RENEW_FN, RENEW]));
pub(crate) static RENEW_MANY_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&[NOW, OWNED, RENEW_FN, RENEW_MANY]));
pub(crate) static FINISH_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&[NOW, OWNED, LETTER_FIELDS, FINISH_FN, FINISH]));
pub(crate) static FINISH_MANY_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&[NOW, OWNED, LETTER_FIELDS, FINISH_FN, FINISH_MANY]));
pub(crate) static RELEASE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&[NOW, OWNED, RELEASE]));
pub(crate) static DEFER_LETTER_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&[NOW, OWNED, DEFER_LETTER]));

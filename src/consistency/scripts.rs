//! The Lua scripts that check leases upstream, where the check and the write must be
//! one atomic step. They are loaded on every shared connection when it connects and
//! called by `EVALSHA`; a `NOSCRIPT` reply (after a `SCRIPT FLUSH`) is answered by
//! re-running the script with `EVAL`.

use bytes::Bytes;

/// A script and its SHA1, as `EVALSHA` names it.
#[derive(Debug, Clone)]
pub struct Script {
    pub body: Bytes,
    pub sha: Bytes,
}

impl Script {
    fn new(body: &'static str) -> Script {
        Script {
            body: Bytes::from_static(body.as_bytes()),
            sha: Bytes::from(sha1_smol::Sha1::from(body).digest().to_string()),
        }
    }
}

/// A read of a `cache` key. KEYS: key, lease key, tombstone key. ARGV: lease token,
/// lease TTL (ms). Returns `{1, value}` on a hit, `{2}` on a miss with a lease granted to
/// the caller, `{3}` on a miss while another client holds the lease, `{4}` on a miss
/// within `hold_off` of an invalidation (no lease: a fill now would be refused anyway,
/// so nobody should wait for one); errors as `GET` gives them.
pub const LEASE_GET: &str = r#"
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' and v.err then return v end
if v then return {1, v} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {4} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3}
"#;

/// A fill under a lease. KEYS: key, lease key, tombstone key. ARGV: lease token, then
/// the `SET` arguments after the key. Stored only if the caller's lease is still the
/// live one and no invalidation happened within `hold_off`; returns `{1, <SET reply>}`
/// when stored, `{0, <key exists>}` when rejected. The lease is used up either way.
pub const FILL: &str = r#"
local mine = redis.call('GET', KEYS[2]) == ARGV[1]
if mine then redis.call('DEL', KEYS[2]) end
if not mine or redis.call('EXISTS', KEYS[3]) == 1 then
  return {0, redis.call('EXISTS', KEYS[1])}
end
return {1, redis.pcall('SET', KEYS[1], unpack(ARGV, 2))}
"#;

/// A `SET` with no lease behind it (write-through). KEYS: key, lease key, tombstone key.
/// ARGV: channel, hold-off (ms), "set" or "invalidate", "nx" or "", then the `SET`
/// arguments after the key. A `SET NX` of an existing key writes nothing, as in Redis. Voids any lease, and stores the value unless another write of the key
/// landed within `hold_off` (or the keyspace always invalidates), in which case the key
/// is deleted instead; leaves a tombstone and publishes the invalidation. Returns
/// `{1, <SET reply>}` when stored, `{0, <key existed>}` when collapsed.
pub const BLIND_SET: &str = r#"
if ARGV[4] == 'nx' and redis.call('EXISTS', KEYS[1]) == 1 then return {1, false} end
redis.call('DEL', KEYS[2])
local r
if ARGV[3] == 'set' and redis.call('EXISTS', KEYS[3]) == 0 then
  r = {1, redis.pcall('SET', KEYS[1], unpack(ARGV, 5))}
else
  r = {0, redis.call('DEL', KEYS[1])}
end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[1], KEYS[1])
return r
"#;

/// `MGET` of `cache` keys. KEYS: the n keys, their n lease keys, their n tombstone
/// keys. ARGV: lease token, lease TTL (ms). Returns `{values, statuses}`: the values as
/// `MGET` gives them, and per key 1 (hit), 2 (miss, lease granted), 3 (miss, another
/// client's lease), 4 (miss within `hold_off`: no lease), 5 (not a string: no lease).
pub const LEASE_MGET: &str = r#"
local n = #KEYS / 3
local vals, st = {}, {}
for i = 1, n do
  local v = redis.pcall('GET', KEYS[i])
  if type(v) == 'table' then
    vals[i] = false; st[i] = 5
  elseif v then
    vals[i] = v; st[i] = 1
  elseif redis.call('EXISTS', KEYS[2 * n + i]) == 1 then
    vals[i] = false; st[i] = 4
  elseif redis.call('SET', KEYS[n + i], ARGV[1], 'NX', 'PX', ARGV[2]) then
    vals[i] = false; st[i] = 2
  else
    vals[i] = false; st[i] = 3
  end
end
return {vals, st}
"#;

/// `MSET` of `cache` keys. KEYS: the n keys, their lease keys, their tombstone keys.
/// ARGV: channel, hold-off (ms), "set" or "invalidate", then per key: "f" (a fill under
/// the given token), "b" (a write-through), "v" (a SET without a lease while another
/// connection fills: not stored, but it voids the lease like any write) or "r" (a
/// dropped fill), the token, the value.
pub const MSET_MANY: &str = r#"
local n = #KEYS / 3
for i = 1, n do
  local kind, token, val = ARGV[1 + 3 * i], ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  local k, l, t = KEYS[i], KEYS[n + i], KEYS[2 * n + i]
  if kind == 'f' then
    local mine = redis.call('GET', l) == token
    if mine then redis.call('DEL', l) end
    if mine and redis.call('EXISTS', t) == 0 then redis.call('SET', k, val) end
  elseif kind == 'b' or kind == 'v' then
    redis.call('DEL', l)
    if kind == 'b' and ARGV[3] == 'set' and redis.call('EXISTS', t) == 0 then
      redis.call('SET', k, val)
    else
      redis.call('DEL', k)
    end
    redis.call('SET', t, '1', 'PX', ARGV[2])
    redis.call('PUBLISH', ARGV[1], k)
  end
end
return redis.status_reply('OK')
"#;

/// `RANDOMKEY` that never answers a reserved key. ARGV: reserved prefix, draws. Draws up
/// to `draws` random keys and answers the first that is not reserved; when every draw
/// was reserved (visible keys are rare), answers the first visible key of a bounded
/// `SCAN` (at most 16 calls of `COUNT 64`), else nil: an empty database answers nil as
/// `RANDOMKEY` does, in RESP2 and RESP3 alike (Lua `false`).
pub const RANDOM_KEY: &str = r#"
local p = ARGV[1]
for _ = 1, tonumber(ARGV[2]) do
  local k = redis.call('RANDOMKEY')
  if not k then return false end
  if string.sub(k, 1, #p) ~= p then return k end
end
local cursor = '0'
for _ = 1, 16 do
  local r = redis.call('SCAN', cursor, 'COUNT', 64)
  for _, k in ipairs(r[2]) do
    if string.sub(k, 1, #p) ~= p then return k end
  end
  cursor = r[1]
  if cursor == '0' then break end
end
return false
"#;

/// `KEYS` (ARGV: prefix, pattern) or `SCAN` (ARGV: prefix, "scan", the `SCAN`
/// arguments) without reserved keys, in a reply of exactly the plain command's shape;
/// errors as the plain command gives them. Used where the reply cannot be translated
/// (inside a transaction, where it is one element of the `EXEC` array).
pub const LISTING: &str = r#"
local p = ARGV[1]
local function visible(keys)
  local out = {}
  for _, k in ipairs(keys) do
    if string.sub(k, 1, #p) ~= p then out[#out + 1] = k end
  end
  return out
end
if ARGV[2] == 'scan' then
  local r = redis.pcall('SCAN', unpack(ARGV, 3))
  if r.err then return r end
  return {r[1], visible(r[2])}
end
local r = redis.pcall('KEYS', ARGV[2])
if r.err then return r end
return visible(r)
"#;

/// All scripts, loaded together.
#[derive(Debug, Clone)]
pub struct Scripts {
    pub lease_get: Script,
    pub fill: Script,
    pub blind_set: Script,
    pub lease_mget: Script,
    pub mset_many: Script,
    pub random_key: Script,
    pub listing: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            lease_get: Script::new(LEASE_GET),
            fill: Script::new(FILL),
            blind_set: Script::new(BLIND_SET),
            lease_mget: Script::new(LEASE_MGET),
            mset_many: Script::new(MSET_MANY),
            random_key: Script::new(RANDOM_KEY),
            listing: Script::new(LISTING),
        }
    }
}

impl Scripts {
    pub fn all(&self) -> [&Script; 7] {
        [
            &self.lease_get,
            &self.fill,
            &self.blind_set,
            &self.lease_mget,
            &self.mset_many,
            &self.random_key,
            &self.listing,
        ]
    }
}

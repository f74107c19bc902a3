//! The Lua scripts that take the fill protocol's decisions upstream, where the check and
//! the write must be one atomic step (`fill.rs` is their twin in Rust; keep the two in
//! step). They are loaded on every shared connection when it connects and called by
//! `EVALSHA`; a `NOSCRIPT` reply (after a `SCRIPT FLUSH`) is answered by re-running the
//! script with `EVAL`. Inside a transaction they are queued as `EVAL`, so that no
//! `NOSCRIPT` can split a write from its invalidation.
//!
//! Every script reads the time from the upstream's `TIME`: one clock for every cachet.

use bytes::Bytes;

/// A script and its SHA1, as `EVALSHA` names it.
#[derive(Debug, Clone)]
pub struct Script {
    pub body: Bytes,
    pub sha: Bytes,
}

impl Script {
    fn new(body: String) -> Script {
        let sha = Bytes::from(sha1_smol::Sha1::from(&body).digest().to_string());
        Script {
            body: Bytes::from(body),
            sha,
        }
    }
}

/// What every fill-protocol script starts with: the upstream's clock, and a key's
/// state hash read and written whole (`fill.rs` describes the fields).
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function load(S, now)
  local f = redis.call('HMGET', S, 'm', 's', 't', 'l', 'w', 'x')
  local st = {m = tonumber(f[1]) or 0, s = tonumber(f[2]) or 0, t = tonumber(f[3]) or 0,
              l = tonumber(f[4]) or 0, w = tonumber(f[5]) or 0, x = tonumber(f[6]) or 0}
  if math.max(st.m, st.s, st.t, st.l, st.w, st.x) <= now then
    st.m, st.s, st.t, st.l, st.w, st.x = 0, 0, 0, 0, 0, 0
  end
  return st
end
-- Whether the client's own user may run its command, the c arguments after ARGV[at]
-- (c = 0: not asked). Redis before 7.0 cannot tell; the command's own calls are then
-- checked as they run.
local function may_run(at, c)
  if c == 0 or not redis.acl_check_cmd then return true end
  local ok, allowed = pcall(redis.acl_check_cmd, unpack(ARGV, at + 1, at + c))
  return not ok or allowed
end
local DENIED = 'NOPERM this user has no permissions to run this command'
local function save(S, st, now)
  local e = math.max(st.m, st.s, st.t, st.l, st.w, st.x)
  if e <= now then redis.call('DEL', S) return end
  redis.call('HSET', S, 'm', st.m, 's', st.s, 't', st.t, 'l', st.l, 'w', st.w, 'x', st.x)
  redis.call('PEXPIREAT', S, e)
end
"#;

/// Reads of `cache` keys that a plain read found absent (`fill::miss`). KEYS: n data
/// keys, then their n state keys. ARGV: mode, lease ttl (ms), fill window (ms). Modes:
/// `wait` (may be told to wait), `final` (answered now), `record` (the client is answered
/// nil whatever the key holds now: the miss is recorded in any case, the lease taken only
/// for an absent key). Returns per key `{1, value}` (present now), `{2, holder}` (the
/// miss is recorded; `holder` 1 when it took the herd lease), `{3, ms}` (absent under a tombstone: wait this long), `{4, ms}` (absent
/// while another client holds the lease: wait for its fill, at most this long) or `{5}`
/// (not a string).
const READ: &str = r#"
local n = #KEYS / 2
local mode, ttl, W = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local out = {}
for i = 1, n do
  local v = redis.pcall('GET', KEYS[i])
  if mode ~= 'record' and type(v) == 'table' then
    out[i] = {5}
  elseif mode ~= 'record' and v then
    out[i] = {1, v}
  else
    local S = KEYS[n + i]
    local st = load(S, now)
    if mode == 'wait' and st.t > now then
      out[i] = {3, st.t - now}
    elseif mode == 'wait' and st.l > now then
      out[i] = {4, st.l - now}
    else
      st.m = now + W
      if st.t > now then st.s = math.max(st.s, st.m) end
      local holder = 0
      if st.l <= now and not v then st.l = now + ttl; holder = 1 end
      save(S, st, now)
      out[i] = {2, holder}
    end
  end
end
return out
"#;

/// A `SET` of a `cache` key (`fill::judge_set`). KEYS: key, state key. ARGV: policy
/// (`set`, `collapse`, `invalidate`), fill window (ms), channel, flags (`n`: NX, `x`: XX,
/// `g`: GET, `i`: answer as `SETNX`), amnesia-until (ms), reply (`tagged` or `bare`), the
/// ACL check (a count c, then c arguments: the client's command as it sent it, values
/// blanked, or c = 0 for none), then `SET`'s arguments after the key, the value first.
/// `tagged` returns `{verdict}` or, with GET, `{verdict, old value}`, or `{8}` when the
/// client's own user may not run its command (nothing is done; cachet lets Redis refuse
/// the command itself); `bare` returns the reply the command itself would give (inside a
/// client's transaction). An error of the `SET` itself changes nothing.
const SET: &str = r#"
local k, S = KEYS[1], KEYS[2]
local policy, W, chan, flags = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local amnesia, bare, c = tonumber(ARGV[5]), ARGV[6] == 'bare', tonumber(ARGV[7])
if not may_run(7, c) then
  if bare then return redis.error_reply(DENIED) end
  return {8}
end
local value = ARGV[8 + c]
local nx, xx = string.find(flags, 'n', 1, true), string.find(flags, 'x', 1, true)
local get, int = string.find(flags, 'g', 1, true), string.find(flags, 'i', 1, true)
local old = false
if get then
  old = redis.pcall('GET', k)
  if type(old) == 'table' then return old end
end
local function reply(v)
  if not bare then
    if get then return {v, old} end
    return {v}
  end
  if get then return old end
  local set = v == 1 or v == 2 or (not nx and v ~= 6)
  if int then
    if set then return 1 end
    return 0
  end
  if set then return redis.status_reply('OK') end
  return false
end
local exists = redis.call('EXISTS', k) == 1
if (nx and exists) or (xx and not exists) then return reply(6) end
local now = now_ms()
local st = load(S, now)
local v
if st.m <= now then
  if now < amnesia then v = 5
  elseif policy == 'invalidate' or (policy == 'collapse' and st.w > now) then v = 7
  else v = 1 end
elseif math.max(st.s, amnesia) <= now and not (policy == 'collapse' and st.w > now) then
  v = 2
else
  local cur = redis.pcall('GET', k)
  if exists and cur == value then v = 3
  elseif exists or policy ~= 'set' then v = 4
  else v = 5 end
end
if v == 1 or v == 2 then
  local r = redis.pcall('SET', k, unpack(ARGV, 8 + c))
  if type(r) == 'table' and r.err then return r end
  if v == 2 then st.s = st.m else st.x = now + W end
  st.l = 0
  redis.call('PUBLISH', chan, k)
elseif v == 4 or v == 7 then
  redis.call('DEL', k)
  st.s = math.max(st.s, st.m)
  st.l = 0
  redis.call('PUBLISH', chan, k)
end
if v == 3 or v == 5 then st.l = 0 end
if policy == 'collapse' then st.w = now + W end
save(S, st, now)
return reply(v)
"#;

/// `MSET`/`MSETNX` with at least one `cache` key. KEYS: the n keys, then their n state
/// keys. ARGV: fill window (ms), channel, amnesia-until (ms), `nx` or `all`, reply
/// (`tagged` or `bare`), the ACL check (as `SET`'s), then per key its policy (`set`,
/// `collapse`, `invalidate`; `strict` and `pass` keys are simply set, `strict` ones
/// invalidated) and its value. `MSETNX` sets nothing unless every key is absent and
/// every `SET` would be stored. `tagged` returns the verdicts (`{8}`: refused by the
/// ACL check); `bare` what the command returns.
const MSET: &str = r#"
local n = #KEYS / 2
local W, chan, amnesia = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local nx, bare, c = ARGV[4] == 'nx', ARGV[5] == 'bare', tonumber(ARGV[6])
if not may_run(6, c) then
  if bare then return redis.error_reply(DENIED) end
  return {8}
end
local now = now_ms()
local function judge(i, apply)
  local k, S = KEYS[i], KEYS[n + i]
  local policy, value = ARGV[5 + c + 2 * i], ARGV[6 + c + 2 * i]
  if policy == 'strict' or policy == 'pass' then
    if apply then
      redis.call('SET', k, value)
      if policy == 'strict' then redis.call('PUBLISH', chan, k) end
    end
    return 1
  end
  local exists = redis.call('EXISTS', k) == 1
  local st = load(S, now)
  local v
  if st.m <= now then
    if now < amnesia then v = 5
    elseif policy == 'invalidate' or (policy == 'collapse' and st.w > now) then v = 7
    else v = 1 end
  elseif math.max(st.s, amnesia) <= now and not (policy == 'collapse' and st.w > now) then
    v = 2
  else
    local cur = redis.pcall('GET', k)
    if exists and cur == value then v = 3
    elseif exists or policy ~= 'set' then v = 4
    else v = 5 end
  end
  if not apply then return v end
  if v == 1 or v == 2 then
    redis.call('SET', k, value)
    if v == 2 then st.s = st.m else st.x = now + W end
    st.l = 0
    redis.call('PUBLISH', chan, k)
  elseif v == 4 or v == 7 then
    redis.call('DEL', k)
    st.s = math.max(st.s, st.m)
    st.l = 0
    redis.call('PUBLISH', chan, k)
  end
  if v == 3 or v == 5 then st.l = 0 end
  if policy == 'collapse' then st.w = now + W end
  save(S, st, now)
  return v
end
local out = {}
if nx then
  for i = 1, n do
    if redis.call('EXISTS', KEYS[i]) == 1 then
      if bare then return 0 end
      return {6}
    end
  end
  for i = 1, n do
    local v = judge(i, false)
    if v ~= 1 and v ~= 2 then
      if bare then return 0 end
      return {v}
    end
  end
end
for i = 1, n do out[i] = judge(i, true) end
if bare then
  if nx then return 1 end
  return redis.status_reply('OK')
end
return out
"#;

/// The invalidation of written `cache` keys (`fill::invalidate`), run in the write's
/// own transaction. KEYS: the n keys, then their n state keys. ARGV: `keep` (the
/// write's own invalidation, which records the write) or, for an invalidation re-sent
/// after a write of unknown fate (`fill::resend`), a time no earlier than when that
/// write was planned: each key is then deleted too, unless it was written since; the
/// channel; the fill window (ms); then each key's `hold_off` (ms). Publishes one
/// message per key.
const INVALIDATE: &str = r#"
local n = #KEYS / 2
local sent, chan, W = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local now = now_ms()
for i = 1, n do
  local S = KEYS[n + i]
  local st = load(S, now)
  local del = sent and st.x < sent + W
  st.s = math.max(st.s, st.m)
  st.t = now + tonumber(ARGV[3 + i])
  st.l = 0
  if not sent then st.x = now + W end
  save(S, st, now)
  if del then redis.call('DEL', KEYS[i]) end
  redis.call('PUBLISH', chan, KEYS[i])
end
return n
"#;

/// `RANDOMKEY` that never answers a reserved key. ARGV: reserved prefix, draws. Draws up
/// to `draws` random keys and answers the first that is not reserved; when every draw
/// was reserved (visible keys are rare), answers the first visible key of a bounded
/// `SCAN` (at most 16 calls of `COUNT 64`), else nil: an empty database answers nil as
/// `RANDOMKEY` does, in RESP2 and RESP3 alike (Lua `false`).
const RANDOM_KEY: &str = r#"
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
const LISTING: &str = r#"
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

/// What an upstream user other than cachet's own must be allowed for cachet to act for
/// it: the commands cachet adds to its writes, on cachet's state keys and channel.
/// Run as that user with `EVAL` (not loaded: it is run as users that may not load
/// scripts). KEYS: one state key. ARGV: the channel. Returns the commands (with the
/// state key or channel they name) it may not run; empty when it may run them all or
/// when Redis cannot tell (before 7.0).
pub const CAPABILITY: &str = r#"
if not redis.acl_check_cmd then return {} end
local S, C = KEYS[1], ARGV[1]
local checks = {
  {'multi'}, {'exec'}, {'select', '0'}, {'time'},
  {'eval', 'return 0', '1', S}, {'evalsha', 'x', '1', S},
  {'hmget', S, 'm'}, {'hset', S, 'm', '1'}, {'pexpireat', S, '1'}, {'del', S},
  {'exists', S}, {'publish', C, 'x'},
}
local missing = {}
for _, c in ipairs(checks) do
  local ok, allowed = pcall(redis.acl_check_cmd, unpack(c))
  if not ok or not allowed then missing[#missing + 1] = table.concat(c, ' ') end
end
return missing
"#;

/// All scripts, loaded together.
#[derive(Debug, Clone)]
pub struct Scripts {
    pub read: Script,
    pub set: Script,
    pub mset: Script,
    pub invalidate: Script,
    pub random_key: Script,
    pub listing: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        let with_prelude = |body: &str| Script::new(format!("{PRELUDE}{body}"));
        Scripts {
            read: with_prelude(READ),
            set: with_prelude(SET),
            mset: with_prelude(MSET),
            invalidate: with_prelude(INVALIDATE),
            random_key: Script::new(RANDOM_KEY.to_owned()),
            listing: Script::new(LISTING.to_owned()),
        }
    }
}

impl Scripts {
    pub fn all(&self) -> [&Script; 6] {
        [
            &self.read,
            &self.set,
            &self.mset,
            &self.invalidate,
            &self.random_key,
            &self.listing,
        ]
    }

    /// The script a SHA names, for `NOSCRIPT` recovery.
    pub fn by_sha(&self, sha: &[u8]) -> Option<&Script> {
        self.all().into_iter().find(|s| s.sha == sha)
    }
}

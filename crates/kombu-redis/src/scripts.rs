//! The Lua scripts that make claims, restores and lock releases atomic on the server.
//!
//! Kombu pops with BRPOP and then, in a second round trip, writes the unacked hash: a consumer
//! that dies between the two loses the message (Kombu #1836). [`CLAIM`] pops and records in
//! one script, so a message is always either in its queue or in the unacked hash, and the
//! records look exactly like Kombu's, so Python restorers handle them too.

use std::sync::LazyLock;

use redis::Script;

/// Pop up to `max` messages from a queue's bucket lists (in order) and record each in the
/// unacked hash and index, as Kombu's `QoS.append` does: the hash value is
/// `[<envelope>, <exchange>, <routing_key>]` with the envelope embedded as a JSON object.
///
/// With `track`, the claimed delivery tags also go to a receipt key (a JSON array, expiring
/// after `receipt_ttl` seconds), and the previous confirmed receipt is deleted: see `claims`.
///
/// KEYS: unacked hash, unacked index, malformed list, receipt, previous receipt (or `''`
/// with `drop_previous` `0`), bucket lists…
/// ARGV: max, now (epoch seconds), track (`1`/`0`), receipt_ttl (seconds), drop_previous.
/// Returns a flat array of `kind, payload, delivery_tag` (`m` message, `x` parked malformed).
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local max = tonumber(ARGV[1])
local now = ARGV[2]
local track = ARGV[3] == '1'
local out = {}
local tags = {}
local n = 0
if ARGV[5] == '1' then redis.call('DEL', KEYS[5]) end
for i = 6, #KEYS do
  while n < max do
    local payload = redis.call('RPOP', KEYS[i])
    if not payload then break end
    local ok, msg = pcall(cjson.decode, payload)
    local tag = nil
    local ex, rk = '', ''
    if ok and type(msg) == 'table' and type(msg['properties']) == 'table' then
      tag = msg['properties']['delivery_tag']
      local info = msg['properties']['delivery_info']
      if type(info) == 'table' then
        if type(info['exchange']) == 'string' then ex = info['exchange'] end
        if type(info['routing_key']) == 'string' then rk = info['routing_key'] end
      end
    end
    if type(tag) ~= 'string' or string.sub(payload, 1, 1) ~= '{' then
      redis.call('LPUSH', KEYS[3], payload)
      out[#out + 1] = 'x'
      out[#out + 1] = payload
      out[#out + 1] = ''
    else
      if track then
        redis.call('ZADD', KEYS[2], now, tag)
        redis.call('HSET', KEYS[1], tag, '[' .. payload .. ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']')
        tags[#tags + 1] = tag
      end
      out[#out + 1] = 'm'
      out[#out + 1] = payload
      out[#out + 1] = tag
      n = n + 1
    end
  end
  if n >= max then break end
end
if #tags > 0 then
  redis.call('SET', KEYS[4], cjson.encode(tags), 'EX', ARGV[4])
end
return out
"#,
    )
});

/// Restore a delivery: only if its unacked record is still the one read (`expected`, or any
/// record when `expected` is empty), remove the record and push the message to the consume end
/// of every target list. A record someone else restored or acked meanwhile is left alone, so a
/// message is never restored twice.
///
/// KEYS: unacked hash, unacked index, target lists…
/// ARGV: delivery tag, expected record, payload.
/// Returns 1 when restored, 0 when the record was gone or changed.
pub(crate) static RESTORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
if ARGV[2] ~= '' and current ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 3, #KEYS do
  redis.call('RPUSH', KEYS[i], ARGV[3])
end
return 1
"#,
    )
});

/// Release a lock only if this process still holds it (its token is the value).
///
/// KEYS: lock. ARGV: token.
pub(crate) static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// Kombu 5.7's binding refresh for queues with `x-expires`: add the member and push the
/// exchange's deadline (server time + ttl) forward.
///
/// KEYS: binding set, `_kombu.binding_deadlines`. ARGV: member, ttl ms, exchange.
pub(crate) static REFRESH_BINDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('SADD', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], 'GT', now + tonumber(ARGV[2]), ARGV[3])
return 1
"#,
    )
});

/// Route a message over an exchange's binding set and push it to every matching queue, in one
/// round trip (Kombu reads the set with `SMEMBERS`, routes in Python, then pushes).
///
/// Routing is kombu-rs's (`kombu_core::router`): direct bindings match by equality, topic
/// bindings by their binding key with AMQP word semantics (`*` one word, `#` zero or more),
/// fanout matches every member. With no declared type the exchange is topic when a member
/// carries a pattern, else direct, as `load_bindings` infers it. Each queue gets the message
/// once, the locally routed queues first.
///
/// KEYS: the binding set.
/// ARGV: kind (`direct`, `topic`, `fanout` or empty to infer), routing key, separator, key
/// prefix, priority-bucket suffix, payload, then the locally routed queues.
/// Returns `{'none'}` when the set is empty (nothing pushed), else `{'routed', queues…}`.
pub(crate) static ROUTE_AND_PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local kind, rk, sep, prefix, suffix, payload = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if sep == '' then return redis.error_reply('the binding separator must not be empty') end
local members = redis.call('SMEMBERS', KEYS[1])
if #members == 0 then return {'none'} end
local find, sub = string.find, string.sub
local nsep = #sep

-- the position of the last separator in member m (the queue follows it)
local function last_sep(m, first)
  local last, from = nil, first + nsep
  while true do
    local at = find(m, sep, from, true)
    if not at then return last end
    last = at
    from = at + nsep
  end
end
local routed = {'routed'}
local seen = {}
for i = 7, #ARGV do
  local q = ARGV[i]
  if not seen[q] then
    seen[q] = true
    redis.call('LPUSH', prefix .. q .. suffix, payload)
    routed[#routed + 1] = q
  end
end
-- no declared type: topic when a member carries a pattern (between the first and last separator)
if kind == '' then
  kind = 'direct'
  for _, m in ipairs(members) do
    local first = find(m, sep, 1, true)
    local last = first and last_sep(m, first)
    if last and last > first + nsep then
      kind = 'topic'
      break
    end
  end
end
local key_words
local function words(key)
  local out = {}
  if key == '' then return out end
  local start = 1
  while true do
    local dot = find(key, '.', start, true)
    if not dot then out[#out + 1] = sub(key, start) return out end
    out[#out + 1] = sub(key, start, dot - 1)
    start = dot + 1
  end
end
local function match(p, pi, k, ki)
  while pi <= #p do
    local w = p[pi]
    if w == '#' then
      while p[pi + 1] == '#' do pi = pi + 1 end
      if pi == #p then return true end
      for j = ki, #k + 1 do
        if match(p, pi + 1, k, j) then return true end
      end
      return false
    elseif w == '*' then
      if ki > #k then return false end
    elseif ki > #k or k[ki] ~= w then
      return false
    end
    ki = ki + 1
    pi = pi + 1
  end
  return ki > #k
end
for _, m in ipairs(members) do
  local first = find(m, sep, 1, true)
  if first then
    local binding = sub(m, 1, first - 1)
    local hit
    if kind == 'direct' then
      hit = binding == rk
    elseif kind == 'fanout' then
      hit = true
    else
      if not key_words then key_words = words(rk) end
      hit = match(words(binding), 1, key_words, 1)
    end
    if hit then
      local last = last_sep(m, first)
      if last then
        local q = sub(m, last + nsep)
        if not seen[q] then
          seen[q] = true
          redis.call('LPUSH', prefix .. q .. suffix, payload)
          routed[#routed + 1] = q
        end
      end
    end
  end
end
return routed
"#,
    )
});

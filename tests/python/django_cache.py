"""Django-cache-style traffic through cachet with redis-py 8.

redis-py 8 opens every connection with `HELLO 3` and `CLIENT SETINFO`, and Django's
Redis cache backend issues the commands below (keys in Django's `:1:` format). Run as
`python3 django_cache.py HOST PORT`; exits non-zero on the first wrong reply.
"""

import sys
import threading

import redis

host, port = sys.argv[1], int(sys.argv[2])
checks = 0


def check(got, want, what):
    global checks
    if got != want:
        sys.exit(f"FAIL {what}: got {got!r}, want {want!r}")
    checks += 1


def client(db=0):
    # protocol=3 is redis-py 8's default; said explicitly so the test keeps its meaning.
    return redis.Redis(host=host, port=port, db=db, protocol=3, socket_timeout=10)


r = client()
check(r.ping(), True, "PING")
hello = r.connection_pool.get_connection().handshake_metadata
check(hello.get(b"proto", hello.get("proto")), 3, "HELLO 3 proto")

# cache.get / cache.set / cache.add / cache.delete
check(r.get(":1:missing"), None, "GET miss")
check(r.set(":1:user:1", b"alice", ex=300), True, "SET EX")
check(r.get(":1:user:1"), b"alice", "GET hit")
check(r.set(":1:user:1", b"bob", ex=300, nx=True), None, "SET NX on existing (add)")
check(r.set(":1:user:2", b"carol", ex=300, nx=True), True, "SET NX on missing (add)")
ttl = r.ttl(":1:user:1")
check(0 < ttl <= 300, True, "TTL")
# get_many / set_many
check(r.mget([":1:user:1", ":1:user:2", ":1:nope"]), [b"alice", b"carol", None], "MGET")
p = r.pipeline(transaction=False)
for i in range(50):
    p.set(f":1:item:{i}", str(i), ex=60)
check(p.execute(), [True] * 50, "pipelined set_many")
check(r.mget([f":1:item:{i}" for i in range(50)]), [str(i).encode() for i in range(50)], "MGET 50")
# incr / decr (Django checks existence first)
r.set(":1:counter", 10)
check(r.exists(":1:counter"), 1, "EXISTS")
check(r.incrby(":1:counter", 5), 15, "INCRBY")
check(r.incrby(":1:counter", -3), 12, "DECR via INCRBY")
# touch
check(r.expire(":1:counter", 100), True, "EXPIRE (touch)")
check(r.persist(":1:counter"), True, "PERSIST (touch None)")
check(r.ttl(":1:counter"), -1, "TTL after PERSIST")
# delete / delete_many
check(r.delete(":1:user:1"), 1, "DEL")
check(r.delete(":1:user:2", ":1:item:0", ":1:nope"), 2, "DEL many")
# RESP3 types through cachet: maps, sets, doubles
r.hset(":1:h", mapping={"a": "1", "b": "2"})
check(r.hgetall(":1:h"), {b"a": b"1", b"b": b"2"}, "HGETALL as a RESP3 map")
r.sadd(":1:s", "x", "y")
check(r.smembers(":1:s"), {b"x", b"y"}, "SMEMBERS as a RESP3 set")
r.zadd(":1:z", {"m": 1.5})
check(r.zscore(":1:z", "m"), 1.5, "ZSCORE as a RESP3 double")
# transactions
p = r.pipeline(transaction=True)
p.set(":1:tx", "1").incr(":1:tx").get(":1:tx")
check(p.execute(), [True, 2, b"2"], "MULTI/EXEC")
# databases are per client
r1 = client(db=1)
r1.set(":1:only-in-db1", "y")
check(r.get(":1:only-in-db1"), None, "SELECT isolation (db0 does not see db1)")
check(r1.get(":1:only-in-db1"), b"y", "SELECT isolation (db1 sees its key)")
# client names are per connection
r.client_setname("django-web")
check(r.client_getname(), "django-web" if r.get_encoder().decode_responses else b"django-web", "CLIENT GETNAME")
# pub/sub (how apps keep in-process caches coherent)
ps = client().pubsub()
ps.subscribe("events")
msg = ps.get_message(timeout=5)
check(msg and msg["type"], "subscribe", "SUBSCRIBE confirmation")
r.publish("events", "hello")
msg = ps.get_message(timeout=5)
check(msg and msg["data"], b"hello", "published message")
ps.close()

# concurrent clients, each with its own keys
errors = []


def worker(n):
    c = client()
    try:
        for i in range(200):
            key = f":1:w{n}:{i}"
            c.set(key, f"{n}-{i}", ex=60)
            got = c.get(key)
            if got != f"{n}-{i}".encode():
                errors.append((key, got))
    except Exception as e:  # noqa: BLE001 - any failure is reported
        errors.append(("exception", repr(e)))


threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check(errors, [], "concurrent workers")

check(r.flushdb(), True, "FLUSHDB (cache.clear)")
# What remains is cachet's own state of keys missed in the last fill_window (kept so
# that a fill read before the clear is not stored after it): KEYS never shows it.
check(r.keys("*"), [], "KEYS * after clear")
print(f"ok {checks} checks")

"""redis-py's Lock through cachet, against a `lock` keyspace (`lock:*`, max_ttl 30 s,
over_max_ttl = "refuse"): prints what each step came to, one line each, for
tests/redis_py.rs to compare."""

import sys

import redis
from redis.exceptions import ResponseError

host, port = sys.argv[1], int(sys.argv[2])
r = redis.Redis(host=host, port=port)


def pttl(name):
    return r.pttl(name)


def step(name, f):
    try:
        print(f"{name}: {f()}")
    except ResponseError as e:
        print(f"{name}: refused: {e}")


# A lock longer than max_ttl: refused, and nothing is held.
step("timeout=120", lambda: r.lock("lock:long", timeout=120).acquire(blocking=False))
step("held after refusal", lambda: r.exists("lock:long"))

# Within max_ttl: taken, with the expiry asked for.
lock = r.lock("lock:job", timeout=10)
step("timeout=10", lambda: lock.acquire(blocking=False))
step("pttl within 10s", lambda: 9000 < pttl("lock:job") <= 10000)
# A second holder is told it did not get it.
step("second holder", lambda: r.lock("lock:job", timeout=10).acquire(blocking=False))

# extend() is a script: cachet cannot read it first, so the expiry is capped after it.
step("extend(100)", lambda: lock.extend(100))
step("pttl capped to max_ttl", lambda: 29000 < pttl("lock:job") <= 30000)
step("extend(5, replace_ttl)", lambda: lock.extend(5, replace_ttl=True))
step("pttl replaced", lambda: 4000 < pttl("lock:job") <= 5000)
step("reacquire()", lambda: lock.reacquire())
step("pttl reacquired", lambda: 9000 < pttl("lock:job") <= 10000)

# Other ways past max_ttl: refused, the expiry unchanged.
step("EXPIRE 120", lambda: r.expire("lock:job", 120))
step("PEXPIREAT in an hour", lambda: r.pexpireat("lock:job", int(r.time()[0] * 1000) + 3600000))
step("PERSIST", lambda: r.persist("lock:job"))
step("GETEX EX 120", lambda: r.getex("lock:job", ex=120) is not None)
step("GETEX PERSIST", lambda: r.getex("lock:job", persist=True) is not None)
step("SET KEEPTTL", lambda: r.set("lock:job", lock.local.token, keepttl=True))
step("pttl unchanged", lambda: 9000 < pttl("lock:job") <= 10000)
# Within max_ttl: as Redis does.
step("EXPIRE 20", lambda: r.expire("lock:job", 20))
step("release()", lambda: lock.release())
step("held after release", lambda: r.exists("lock:job"))

# A lock without a timeout gets max_ttl.
forever = r.lock("lock:forever")
step("timeout=None", lambda: forever.acquire(blocking=False))
step("pttl given", lambda: 29000 < pttl("lock:forever") <= 30000)
forever.release()

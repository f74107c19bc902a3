"""A small Django application using Django's own Redis cache backend through cachet.

It reads "articles" from a SQLite database through the cache (cache-aside, as Django
apps do: `cache.get_or_set`, `get_many`, `set_many`, `delete` after a write) and
prints what it saw. Point REDIS_URL at cachet (redis://cachet:6380/0 in
docker-compose.yml) instead of Redis: the application does not change.

    REDIS_URL=redis://127.0.0.1:6380/0 python3 demo/app.py [--iterations N]
"""

import argparse
import os
import sqlite3
import sys
import time

import django
from django.conf import settings

settings.configure(
    CACHES={
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ.get("REDIS_URL", "redis://127.0.0.1:6380/0"),
            "TIMEOUT": 300,
        }
    },
)
django.setup()

from django.core.cache import cache  # noqa: E402  (needs settings first)

db = sqlite3.connect(":memory:")
db.execute("CREATE TABLE article (id INTEGER PRIMARY KEY, title TEXT, ver INTEGER)")
db.executemany("INSERT INTO article VALUES (?, ?, 1)", [(i, f"article {i}") for i in range(20)])
db.commit()


def load(article_id):
    row = db.execute("SELECT title, ver FROM article WHERE id = ?", (article_id,)).fetchone()
    return f"{row[0]} v{row[1]}"


def update(article_id):
    db.execute("UPDATE article SET ver = ver + 1 WHERE id = ?", (article_id,))
    db.commit()
    # Invalidate after the commit; cachet publishes the invalidation atomically.
    cache.delete(f"article:{article_id}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=0, help="0: run until stopped")
    args = ap.parse_args()
    i = stale = 0
    while args.iterations == 0 or i < args.iterations:
        aid = i % 20
        got = cache.get_or_set(f"article:{aid}", lambda: load(aid))
        if got != load(aid):
            stale += 1
        if i % 7 == 0:
            update(aid)
        if i % 10 == 0:
            keys = [f"article:{k}" for k in range(5)]
            found = cache.get_many(keys)
            missing = {k: load(int(k.split(":")[1])) for k in keys if k not in found}
            cache.set_many(missing)
        i += 1
        if args.iterations == 0:
            time.sleep(0.05)
            if i % 100 == 0:
                print(f"{i} reads, {stale} stale", flush=True)
    print(f"done: {i} reads, {stale} stale", flush=True)
    return 0 if stale == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""A small Django application that shows what cachet fixes: run it against Redis, then
against cachet, and compare.

It keeps "articles" in a SQLite database and reads them through Django's own Redis
cache backend, cache-aside, as Django apps do: readers `cache.get_or_set` with a slow
query (a slow fill), a writer commits a new version and then `cache.delete`s the key
(invalidation after the commit, the recommended order). Several reader threads share
one cache client, so a miss and its fill often travel on different connections.

Directly against Redis, a reader that missed before an update may store the old
version after the update's delete: the cache then serves the old version until the
entry expires. Through cachet that fill is refused, so no reader sees a version older
than the last completed invalidation, and every entry converges to the database.

    REDIS_URL=redis://127.0.0.1:6379/0 python3 demo/app.py   # directly: stale reads
    REDIS_URL=redis://127.0.0.1:6380/0 python3 demo/app.py   # through cachet: none

It prints what it saw and exits 1 if any read was stale (0 otherwise).
"""

import argparse
import os
import random
import sqlite3
import sys
import threading
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

ARTICLES = 8

db = sqlite3.connect(":memory:", check_same_thread=False)
db_lock = threading.Lock()
with db_lock:
    db.execute("CREATE TABLE article (id INTEGER PRIMARY KEY, ver INTEGER)")
    db.executemany("INSERT INTO article VALUES (?, 1)", [(i,) for i in range(ARTICLES)])
    db.commit()

# The version of each article whose invalidation has completed: a read that starts
# after it must not return anything older.
invalidated = [1] * ARTICLES
invalidated_lock = threading.Lock()


def version(article_id):
    with db_lock:
        return db.execute("SELECT ver FROM article WHERE id = ?", (article_id,)).fetchone()[0]


def load(article_id, delay):
    """The slow query: read the row, then take a while to render it."""
    ver = version(article_id)
    time.sleep(delay)
    return ver


def update(article_id):
    with db_lock:
        db.execute("UPDATE article SET ver = ver + 1 WHERE id = ?", (article_id,))
        db.commit()
        ver = db.execute("SELECT ver FROM article WHERE id = ?", (article_id,)).fetchone()[0]
    # Invalidate after the commit.
    cache.delete(f"article:{article_id}")
    with invalidated_lock:
        invalidated[article_id] = max(invalidated[article_id], ver)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0, help="how long to run")
    ap.add_argument("--readers", type=int, default=6, help="reader threads")
    ap.add_argument("--fill-delay", type=float, default=0.05, help="seconds a fill takes")
    ap.add_argument("--write-pause", type=float, default=1.0, help="seconds between saves")
    args = ap.parse_args()
    cache.delete_many([f"article:{i}" for i in range(ARTICLES)])

    stop = threading.Event()
    counts = {"reads": 0, "stale": 0, "updates": 0}
    counts_lock = threading.Lock()

    def reader(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            aid = rng.randrange(ARTICLES)
            with invalidated_lock:
                floor = invalidated[aid]
            got = cache.get_or_set(f"article:{aid}", lambda: load(aid, args.fill_delay))
            with counts_lock:
                counts["reads"] += 1
                if got < floor:
                    counts["stale"] += 1

    def writer():
        # An article is often saved twice in a row (an edit, then its tags): the
        # second update lands while readers that missed after the first are filling.
        rng = random.Random(0)
        while not stop.is_set():
            aid = rng.randrange(ARTICLES)
            for _ in range(2):
                update(aid)
                time.sleep(args.fill_delay / 2)
            with counts_lock:
                counts["updates"] += 2
            time.sleep(args.write_pause)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(args.readers)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()

    # Once the writes stop, every entry should hold the database's version (or none).
    left = 0
    for aid in range(ARTICLES):
        cached = cache.get(f"article:{aid}")
        if cached is not None and cached != version(aid):
            left += 1
    print(
        f"{counts['reads']} reads, {counts['updates']} updates: "
        f"{counts['stale']} stale reads, {left} of {ARTICLES} entries stale after the writes",
        flush=True,
    )
    return 1 if counts["stale"] or left else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run by test_django.py in a fresh interpreter: a minimal Django project on poolwatch.

Prints one JSON line of findings. POOLWATCH_TEST_DSN_PARTS holds host, port, user,
password and dbname separated by spaces.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import django
from django.conf import settings

host, port, user, password, dbname = os.environ["POOLWATCH_TEST_DSN_PARTS"].split()
settings.configure(
    DATABASES={
        "default": {
            "ENGINE": "poolwatch.integrations.django",
            "NAME": dbname, "USER": user, "PASSWORD": password, "HOST": host, "PORT": port,
            "OPTIONS": {"pool": {"min_size": 1, "max_size": 3, "leak_timeout": 30}},
        }
    },
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
    USE_TZ=True,
)  # fmt: skip
django.setup()

from django.db import connection, connections, models, transaction  # noqa: E402


class Note(models.Model):
    text = models.CharField(max_length=50, unique=True)

    class Meta:
        app_label = "auth"  # an installed app, so no migrations module is needed
        db_table = "poolwatch_django_notes"


def main() -> int:
    found: dict[str, object] = {}
    with connection.schema_editor() as editor:
        editor.execute("DROP TABLE IF EXISTS poolwatch_django_notes")
        editor.create_model(Note)
    try:
        Note.objects.create(text="first")
        try:
            with transaction.atomic():
                Note.objects.create(text="second")
                Note.objects.create(text="first")  # unique violation: all rolled back
        except django.db.IntegrityError:
            found["rolled_back"] = Note.objects.count() == 1
        pool = connection.pool
        found["pool_class"] = f"{type(pool).__module__}.{type(pool).__qualname__}"
        found["pool_name"] = pool.name

        def in_thread() -> None:  # each thread has its own Django connection
            for _ in range(5):
                Note.objects.filter(text="first").exists()
            connections.close_all()

        threads = [threading.Thread(target=in_thread) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        connections.close_all()  # gives the connections back to the pool
        snap = pool.snapshot()
        found["used_after_close"] = snap.used
        found["size"] = snap.size
        found["max_size"] = snap.max_size
        found["acquired"] = pool.aggregates().acquire["ok"].count
        from poolwatch.metrics import collector_for

        found["exported"] = any(p is pool for p in collector_for().pools())
    finally:
        with connection.schema_editor() as editor:
            editor.execute("DROP TABLE IF EXISTS poolwatch_django_notes")
        connection.close_pool()
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())

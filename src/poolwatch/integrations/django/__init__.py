"""A Django database backend (PostgreSQL, psycopg 3) whose connection pool is poolwatch's.

Django 5.1+ pools with psycopg_pool when ``OPTIONS["pool"]`` is set, and imports
``psycopg_pool.ConnectionPool`` by name, so no setting can swap the class. This
backend is Django's own PostgreSQL backend with that one property replaced::

    DATABASES = {"default": {
        "ENGINE": "poolwatch.integrations.django",
        "NAME": "app", "USER": "app", "HOST": "db",
        "OPTIONS": {"pool": {"min_size": 2, "max_size": 10, "leak_timeout": 30}},
    }}

Pool options are poolwatch's (psycopg_pool's plus ``leak_timeout``); the pool is named
after the database alias and registered for Prometheus export.
"""

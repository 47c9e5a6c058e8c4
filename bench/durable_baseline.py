"""The ingest benchmark's durable baseline: a bare Django view that stores the body in
PostgreSQL (one INSERT, one commit) and then XADDs its id, answering 202 — no auth, no
validation, no dedupe. It is the "stored before 202, done the naive way" floor that
../shared/peers/djdurable.py describes; bench/ingest.py serves this copy (bench/stack.py
starts it) with gunicorn and 2 sync workers in the same run as Signalbox, on the same
database server and Redis.

    BASELINE_PG=postgresql://... BASELINE_REDIS=redis://... gunicorn -w 2 --preload \\
        bench.durable_baseline:application
"""

import os
from urllib.parse import urlparse

import django
from django.conf import settings

_pg = urlparse(os.environ["BASELINE_PG"])
settings.configure(
    DEBUG=False,
    SECRET_KEY="bench",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    LOGGING_CONFIG=None,
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _pg.path.lstrip("/"),
            "USER": _pg.username,
            "HOST": _pg.hostname,
            "PORT": _pg.port or 5432,
            "CONN_MAX_AGE": 600,
        }
    },
)
django.setup()

import redis  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

_redis = redis.Redis.from_url(os.environ["BASELINE_REDIS"])
with connection.cursor() as _cursor:
    _cursor.execute(
        "CREATE TABLE IF NOT EXISTS bench_durable (id bigserial primary key, body jsonb not null,"
        " received_at timestamptz default now())"
    )
connection.close()  # loaded once with --preload; each worker opens its own connection


@csrf_exempt
def durable(request):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO bench_durable (body) VALUES (%s) RETURNING id", [request.body.decode()]
        )
        (row_id,) = cursor.fetchone()
    _redis.xadd("bench-durable", {"id": row_id}, maxlen=100000, approximate=True)
    return JsonResponse({"id": row_id}, status=202)


urlpatterns = [path("durable", durable)]
application = get_wsgi_application()

"""Settings for Signalbox, driven by the environment.

DATABASE_URL and REDIS_URL choose the backing services; without them Signalbox uses an
embedded default (a SQLite file under var/ and a Redis server that `make run` starts).
"""

import os
import re
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from orchestrator.logging_config import logging_settings

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SIGNALBOX_VAR_DIR", BASE_DIR / "var"))
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_mapping(name: str) -> dict[str, str]:
    """`a=x,b=y` as {"a": "x", "b": "y"}; a malformed entry stops the start with its name."""
    mapping = {}
    for item in env_list(name):
        left, sep, right = item.partition("=")
        if (
            not sep
            or not QUEUE_NAME.fullmatch(left.strip())
            or not QUEUE_NAME.fullmatch(right.strip())
        ):
            raise ImproperlyConfigured(f"{name}: {item!r} is not name=queue")
        mapping[left.strip()] = right.strip()
    return mapping


DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    # A per-checkout key kept under var/, so sessions survive restarts without configuration.
    key_file = VAR_DIR / "secret_key"
    if key_file.exists():
        SECRET_KEY = key_file.read_text().strip()
    else:
        import secrets

        VAR_DIR.mkdir(parents=True, exist_ok=True)
        SECRET_KEY = secrets.token_urlsafe(50)
        key_file.write_text(SECRET_KEY)

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")
CSRF_FAILURE_VIEW = "orchestrator.error_views.csrf_failure"

# --- HTTPS: one switch for a deployment served over TLS (docs/security.md) ------------------
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and overwrites any value the
# client sent); the app's own port must then be reachable only through that proxy.
SIGNALBOX_HTTPS = env_bool("SIGNALBOX_HTTPS")
if SIGNALBOX_HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # Probes and scrapers inside the network may speak plain HTTP to these.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SECURE_HSTS_SECONDS = int(os.environ.get("SIGNALBOX_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SIGNALBOX_HSTS_INCLUDE_SUBDOMAINS", True)
    # The directive alone enrols nothing: a domain joins browsers' preload lists only when
    # its owner submits it at hstspreload.org.
    SECURE_HSTS_PRELOAD = env_bool("SIGNALBOX_HSTS_PRELOAD", True)

# Sent on every response (orchestrator/csp.py). No inline script and no eval anywhere: the
# pages load their scripts from static files and htmx runs with allowEval off. Inline style
# attributes stay allowed (they cannot run script).
SECURE_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "font-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "workflows",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "orchestrator.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "workflows.api.middleware.ApiProblemMiddleware",
]

ROOT_URLCONF = "orchestrator.urls"
ASGI_APPLICATION = "orchestrator.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL and env_bool("SIGNALBOX_DB_POOL"):
    # Web processes (the launcher sets this): an ASGI server runs each request's sync code
    # on a fresh thread, and Django's connections are per thread, so without a pool every
    # request would open a new PostgreSQL connection. The pool keeps them across threads.
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2,
        "max_size": int(os.environ.get("SIGNALBOX_DB_POOL_SIZE", "16")),
        # How long a request waits for a connection: while the database is away, ingest
        # answers 503 with Retry-After after this, rather than holding the client.
        "timeout": float(os.environ.get("SIGNALBOX_DB_POOL_TIMEOUT", "3")),
    }
    # Pooled connections are checked when handed out (Django passes the pool its check
    # with CONN_HEALTH_CHECKS): after a database restart every idle one is dead, and each
    # would otherwise fail one request.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
elif DATABASE_URL:
    # Persistent connections (checked before reuse): a worker would otherwise open a new
    # PostgreSQL connection for every step it runs.
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            conn_max_age=int(os.environ.get("SIGNALBOX_DB_CONN_MAX_AGE", "60")),
            conn_health_checks=True,
        )
    }
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "signalbox.sqlite3",
            # Web, workers, scheduler and bus consumer share this file: WAL lets readers run
            # beside the writer, IMMEDIATE takes the write lock up front instead of failing
            # with "database is locked" half-way through a transaction.
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
# How long ingest waits for its events' commit before answering 503 with Retry-After: a
# database that accepted the connection and then went silent must not hold requests for as
# long as the silence lasts. The pool's wait for a connection, by default.
SIGNALBOX_INGEST_STORE_TIMEOUT_SECONDS = float(
    os.environ.get(
        "SIGNALBOX_INGEST_STORE_TIMEOUT", os.environ.get("SIGNALBOX_DB_POOL_TIMEOUT", "3")
    )
)
if DATABASE_URL:
    _db_options = DATABASES["default"].setdefault("OPTIONS", {})
    # A database that does not answer (a host gone, a black-holed network) fails a connect in
    # seconds, not at the operating system's TCP timeout of minutes.
    _db_options.setdefault("connect_timeout", 5)
    # The hot paths' hand-written statements are prepared once per connection
    # (workflows/infra/row_sql.prepared_cursor; the ORM's client-side binding never
    # prepares). A pooler in transaction mode that does not carry prepared statements
    # (PgBouncer before 1.21) needs SIGNALBOX_DB_PREPARED_STATEMENTS=0.
    if env_bool("SIGNALBOX_DB_PREPARED_STATEMENTS", default=True):
        _db_options.setdefault("prepare_threshold", 0)
    # A client host that vanishes mid-transaction (cut off, powered down) leaves its session
    # holding its row locks until the server sees the peer is gone: at Linux's defaults, two
    # hours idle, or ~15 minutes of retransmitting an answer nobody acknowledges, while
    # every run and timer behind those locks waits (the fault suite's cut-off host stalled
    # the scheduler so). Both ends probe an idle connection after
    # SIGNALBOX_DB_KEEPALIVE_SECONDS and drop it after 3 unanswered probes, or once data
    # sent has gone unacknowledged as long (tcp_user_timeout). 0 turns this off (a
    # connection pooler in between may refuse the `options` parameter).
    _keepalive = int(os.environ.get("SIGNALBOX_DB_KEEPALIVE_SECONDS", "10"))
    if _keepalive > 0:
        _interval = max(1, _keepalive // 2)
        _user_timeout_ms = (_keepalive + 3 * _interval) * 1000
        _db_options.update(
            keepalives=1,
            keepalives_idle=_keepalive,
            keepalives_interval=_interval,
            keepalives_count=3,
            tcp_user_timeout=_user_timeout_ms,
        )
        _db_options["options"] = " ".join(
            filter(
                None,
                [
                    _db_options.get("options", ""),
                    f"-c tcp_keepalives_idle={_keepalive}",
                    f"-c tcp_keepalives_interval={_interval}",
                    "-c tcp_keepalives_count=3",
                    f"-c tcp_user_timeout={_user_timeout_ms}",
                ],
            )
        )
# Each test run gets its own database (see tests/services.py).
if os.environ.get("SIGNALBOX_TEST_DB_NAME"):
    DATABASES["default"].setdefault("TEST", {})["NAME"] = os.environ["SIGNALBOX_TEST_DB_NAME"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
# The model backend, refusing accounts and addresses locked by too many failed sign-ins.
AUTHENTICATION_BACKENDS = ["dashboard.login.ThrottledModelBackend"]
SIGNALBOX_LOGIN_FAILURES_PER_ACCOUNT = int(
    os.environ.get("SIGNALBOX_LOGIN_FAILURES_PER_ACCOUNT", "5")
)
SIGNALBOX_LOGIN_FAILURES_PER_ADDRESS = int(
    os.environ.get("SIGNALBOX_LOGIN_FAILURES_PER_ADDRESS", "20")
)
SIGNALBOX_LOGIN_WINDOW_SECONDS = int(os.environ.get("SIGNALBOX_LOGIN_WINDOW_SECONDS", "900"))
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:runs"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns at every start without it
# WhiteNoise serves static files from the app and project folders directly, so neither
# `make run` nor the tests need collectstatic; production may still run it for caching.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- Mail: the send_email step (a step may log in with its own smtp_username/password) -----
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS")
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL")
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "signalbox@localhost")

# --- Redis: bus, Celery broker, channel layer ------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Every Redis key Signalbox writes starts with this prefix, so a test run or a second
# installation can share one Redis server without stealing each other's work.
REDIS_PREFIX = os.environ.get("SIGNALBOX_REDIS_PREFIX", "signalbox")

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # socket_timeout None: redis-py 8 defaults to 5 s, which kills the layer's
            # blocking BZPOPMIN and with it every idle WebSocket.
            "hosts": [{"address": REDIS_URL, "socket_timeout": None, "max_connections": 1000}],
            "prefix": f"{REDIS_PREFIX}:asgi",
            "capacity": 1000,
            "expiry": 30,
        },
    }
}

CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "global_keyprefix": f"{REDIS_PREFIX}:celery:",
    # Timers live in the database, not in ETA messages, so no message waits in Redis. With
    # acks_late a task's message stays unacked while it runs; Redis hands it out again after
    # this, so it must exceed the longest step timeout (86400 s in the definition schema)
    # plus the lease grace: a step still within its lease is never delivered twice. A
    # message lost with a dead worker does not wait for it: the scheduler re-enqueues
    # queued attempts and expires stale leases from the database (docs/durability.md).
    "visibility_timeout": 25 * 3600,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Keep reconnecting however long Redis is away (the default gives up after 100 tries,
# about 47 minutes, and the worker exits). See also orchestrator/broker_recovery.py.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "signalbox"
# Step messages go to a queue per kind (workflows/runs/step_queues.py), so slow outbound work and
# quick transforms can have workers of their own (`celery -A orchestrator worker -Q steps.io`).
# Unnamed kinds: light ones (log, transform, condition...) to steps.fast, the rest (HTTP,
# mail, python, waits...) to steps.io. SIGNALBOX_STEP_QUEUES overrides by kind, e.g.
# "http_request=steps.http,python=steps.python".
SIGNALBOX_STEP_QUEUE_FAST = "steps.fast"
SIGNALBOX_STEP_QUEUE_IO = "steps.io"
SIGNALBOX_STEP_QUEUES = env_mapping("SIGNALBOX_STEP_QUEUES")
# Every queue is declared, so a worker started without -Q (make run, the tests) consumes all.
CELERY_TASK_QUEUES = tuple(
    Queue(name, Exchange(name), routing_key=name)
    for name in sorted(
        {
            CELERY_TASK_DEFAULT_QUEUE,
            SIGNALBOX_STEP_QUEUE_FAST,
            SIGNALBOX_STEP_QUEUE_IO,
            *SIGNALBOX_STEP_QUEUES.values(),
        }
    )
)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = True
# Celery's Django fixup closes every database connection before and after each task unless
# this is set: a new PostgreSQL connection per step (several ms, the largest part of a light
# step's hop). With it, workers keep their connection as web processes do, under
# CONN_MAX_AGE, and workflows/tasks.py checks it at every task start the way Django checks
# it at every request (close_old_connections: a broken or too old connection is replaced,
# with the health check before reuse). The fixup still recycles it every this many tasks.
CELERY_DB_REUSE_MAX = 1000

# --- Signalbox -------------------------------------------------------------------------------
SIGNALBOX = {
    "BUS_PARTITIONS": int(os.environ.get("SIGNALBOX_BUS_PARTITIONS", "4")),
    "BUS_GROUP": "signalbox-matchers",
    "BUS_RETENTION": int(os.environ.get("SIGNALBOX_BUS_RETENTION", "100000")),
    "BUS_CLAIM_IDLE_MS": int(os.environ.get("SIGNALBOX_BUS_CLAIM_IDLE_MS", "30000")),
    "BUS_MAX_DELIVERIES": int(os.environ.get("SIGNALBOX_BUS_MAX_DELIVERIES", "5")),
    # A bus consumer process holds a lease on each partition it reads (one reader per
    # partition: per-key order); a dead consumer's partitions pass to the others after this.
    "BUS_LEASE_MS": int(os.environ.get("SIGNALBOX_BUS_LEASE_MS", "15000")),
    # The bus consumer runs the light steps of the runs it starts, up to this many per
    # partition's share of a read (0: every step goes to the workers).
    "BUS_INLINE_STEPS": int(os.environ.get("SIGNALBOX_BUS_INLINE_STEPS", "20")),
    # An event not on the bus this long after commit is appended again by the outbox relay.
    "OUTBOX_GRACE_SECONDS": float(os.environ.get("SIGNALBOX_OUTBOX_GRACE_SECONDS", "2")),
    # An event published this long ago and still unmatched, on a partition the consumers have
    # drained, lost its bus entry (Redis restarted empty): the relay publishes it again.
    "REDELIVER_UNMATCHED_SECONDS": float(
        os.environ.get("SIGNALBOX_REDELIVER_UNMATCHED_SECONDS", "60")
    ),
    # A queued attempt whose message nobody picked up this long is sent again (the message
    # was lost: Redis restarted empty, or it was prefetched by a worker that died).
    "REENQUEUE_AFTER_SECONDS": float(os.environ.get("SIGNALBOX_REENQUEUE_AFTER_SECONDS", "120")),
    "MAX_EVENT_BYTES": int(os.environ.get("SIGNALBOX_MAX_EVENT_BYTES", str(256 * 1024))),
    "MAX_BATCH_BYTES": int(os.environ.get("SIGNALBOX_MAX_BATCH_BYTES", str(4 * 1024 * 1024))),
    "MAX_BATCH_EVENTS": int(os.environ.get("SIGNALBOX_MAX_BATCH_EVENTS", "1000")),
    # Events per second each API token may send, and the burst it may send at once
    # (workflows/events/rate_limit.py); beyond them POST /api/v1/events answers 429.
    # Generous by default: well above what one web tier stores. 0 turns the limit off.
    "INGEST_RATE_PER_TOKEN": float(os.environ.get("SIGNALBOX_INGEST_RATE_PER_TOKEN", "10000")),
    "INGEST_BURST_PER_TOKEN": int(os.environ.get("SIGNALBOX_INGEST_BURST_PER_TOKEN", "20000")),
    "HEARTBEAT_TTL_SECONDS": 15,
    # A worker renews a running attempt's heartbeat this often; an attempt whose heartbeat is
    # older than the timeout lost its worker and is retried (docs/durability.md). Keep the
    # timeout several beats long, so a slow, loaded worker is not declared lost.
    "STEP_HEARTBEAT_SECONDS": float(os.environ.get("SIGNALBOX_STEP_HEARTBEAT_SECONDS", "10")),
    "STEP_HEARTBEAT_TIMEOUT_SECONDS": float(
        os.environ.get("SIGNALBOX_STEP_HEARTBEAT_TIMEOUT_SECONDS", "60")
    ),
    # A pending or running replay batch with no heartbeat for this long is resumed.
    "REPLAY_BATCH_STALE_SECONDS": float(
        os.environ.get("SIGNALBOX_REPLAY_BATCH_STALE_SECONDS", "120")
    ),
    # Cloud push formats (workflows/events/push_formats): where SNS certificates and
    # subscription URLs may live (a regex; empty: SNS's own hosts), and Google's token keys.
    "SNS_URL_PATTERN": os.environ.get("SIGNALBOX_SNS_URL_PATTERN", ""),
    "PUBSUB_JWKS_URL": os.environ.get("SIGNALBOX_PUBSUB_JWKS_URL", ""),
}
# Hosts and CIDRs that outbound HTTP steps may reach although they are not public.
SIGNALBOX_OUTBOUND_ALLOW = env_list("SIGNALBOX_OUTBOUND_ALLOW")
# Circuit breaker per outbound host (workflows/infra/circuit.py): opens after this many failures
# in a row, fails fast for the cool-down (seconds), then lets one trial request through.
SIGNALBOX_CIRCUIT_FAILURES = int(os.environ.get("SIGNALBOX_CIRCUIT_FAILURES", "5"))
SIGNALBOX_CIRCUIT_COOLDOWN = float(os.environ.get("SIGNALBOX_CIRCUIT_COOLDOWN", "30"))

# --- Tracing and logs (docs/operations.md) -----------------------------------------------
# `otlp` exports OpenTelemetry spans over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (the
# standard OTEL_* variables configure the exporter); `off` (the default) costs nothing.
SIGNALBOX_TRACING = os.environ.get("SIGNALBOX_TRACING", "off").strip().lower() or "off"
# `json` in production (one object per line), `text` for people (`make run`).
SIGNALBOX_LOG_FORMAT = os.environ.get("SIGNALBOX_LOG_FORMAT", "text").strip().lower() or "text"
LOGGING = logging_settings(
    log_format=SIGNALBOX_LOG_FORMAT, level=os.environ.get("SIGNALBOX_LOG_LEVEL", "INFO")
)
if SIGNALBOX_LOG_FORMAT == "json":
    # Python warnings (a library's, Celery's "running as root") become records too, not
    # plain text between the JSON lines.
    import logging

    logging.captureWarnings(True)

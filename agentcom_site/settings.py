"""Settings for the AgentCom LLM Registry, read from the environment (see .env.example)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from agentcom_site import files
from agentcom_site.env import (
    env_bool,
    env_ca_bundle,
    env_float,
    env_header,
    env_hosts,
    env_int,
    env_log_level,
    env_name,
    env_origins,
    env_parsed,
    env_str,
    env_url,
    env_url_list,
)
from agentcom_site.namespace import hub_namespace
from registry.ollama import DEFAULT_ALLOWED_NETWORKS, parse_networks

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = Path(env_str("AGENTCOM_RUN_DIR", str(BASE_DIR / "run")))
try:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
except OSError as exc:
    raise ImproperlyConfigured(f"AGENTCOM_RUN_DIR: cannot create {RUN_DIR}: {exc.strerror}") from None


def _secret_key() -> str:
    """Use DJANGO_SECRET_KEY, else a key generated once and kept (0600) in the run folder."""
    return env_str("DJANGO_SECRET_KEY", "") or files.read_or_create_secret(RUN_DIR / "secret_key")


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_hosts("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
# Origins (scheme://host:port) allowed to open the dashboard socket, instead of "the page's own origin
# on an allowed host" (for a proxy that rewrites Host); they are trusted for CSRF too.
ALLOWED_ORIGINS = env_origins("DJANGO_ALLOWED_ORIGINS", "")
CSRF_TRUSTED_ORIGINS = env_origins("DJANGO_CSRF_TRUSTED_ORIGINS", "", wildcards=True) + ALLOWED_ORIGINS

# Served over HTTPS (directly or behind a TLS-terminating proxy): cookies only over HTTPS, and HSTS
# (sent only on requests that arrived over HTTPS).
SECURE = env_bool("DJANGO_SECURE", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE
_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31_536_000)
SECURE_HSTS_SECONDS = _HSTS_SECONDS if SECURE else 0
# The header a TLS-terminating proxy sets to "https" (e.g. X-Forwarded-Proto). Only set it when every
# request passes through that proxy, which must overwrite the header a client sends.
_PROXY_SSL_HEADER = env_header("DJANGO_SECURE_PROXY_SSL_HEADER")
if _PROXY_SSL_HEADER:
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _PROXY_SSL_HEADER.upper().replace("-", "_"), "https")

# No "daphne" app: it only swaps in its own `runserver` (the hub runs daphne itself), and left
# out, the Celery worker and management commands skip importing Twisted (~25 MiB, ~0.2 s each).
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    # Only so that /api/v1/docs serves Swagger UI from the hub's static files (no CDN, no inline script).
    "ninja",
    "axes",
    "registry",
    "dashboard",
]

MIDDLEWARE = [
    "agentcom_site.middleware.ApiJsonErrors",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "agentcom_site.middleware.ApiNeedsCredentials",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "agentcom_site.middleware.ContentSecurityPolicy",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# Login lockout (django-axes): LOGIN_FAILURE_LIMIT wrong passwords from one client address lock it
# out of the login page and the admin's for LOGIN_LOCKOUT_MINUTES (0: until someone runs
# `manage.py axes_reset_ip ADDRESS`). Counted in the database, so every daphne shares the count.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
_LOCKOUT_MINUTES = env_float("LOGIN_LOCKOUT_MINUTES", 15.0)
AXES_COOLOFF_TIME = timedelta(minutes=_LOCKOUT_MINUTES) if _LOCKOUT_MINUTES else None
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_LOCKOUT_CALLABLE = "agentcom_site.lockout.lockout_response"
AXES_CLIENT_IP_CALLABLE = "agentcom_site.lockout.client_ip"
# Failures expire after the lockout time; a success does not wipe them (else one valid account
# would let its holder guess another's password forever, four tries at a time).
AXES_RESET_ON_SUCCESS = False
# The lockout ends LOGIN_LOCKOUT_MINUTES after the last counted failure, as the page says; tries
# meanwhile do not extend it.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_DISABLE_ACCESS_LOG = True  # no row per successful login: storage stays bounded
AXES_VERBOSE = False

ROOT_URLCONF = "agentcom_site.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "agentcom_site" / "templates"],
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
WSGI_APPLICATION = None
ASGI_APPLICATION = "agentcom_site.asgi.application"

# SQLite by default: WAL + IMMEDIATE transactions + a busy timeout let daphne and the Celery
# worker write at the same time without "database is locked" errors.
_SQLITE_OPTIONS = {
    "timeout": 20,
    "transaction_mode": "IMMEDIATE",
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
}
DATABASE_URL = env_str("DATABASE_URL", "")
if DATABASE_URL:
    try:
        DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
    except (ValueError, KeyError) as exc:  # UnknownSchemeError is a ValueError
        raise ImproperlyConfigured(f"DATABASE_URL is not a database URL ({exc}): {DATABASE_URL!r}") from None
    if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        DATABASES["default"]["ENGINE"] = "agentcom_site.sqlite"
        DATABASES["default"]["OPTIONS"] = dict(_SQLITE_OPTIONS)
else:
    DATABASES = {
        "default": {
            # Django's SQLite with writers queued in the kernel (agentcom_site/sqlite/base.py).
            "ENGINE": "agentcom_site.sqlite",
            "NAME": RUN_DIR / "db.sqlite3",
            "OPTIONS": dict(_SQLITE_OPTIONS),
            # Reuse a thread's connection (opening one costs PRAGMAs and a file open per request).
            "CONN_MAX_AGE": 60,
            # A file (not :memory:) so that end-to-end tests can share it with daphne and Celery.
            "TEST": {"NAME": str(RUN_DIR / "test.sqlite3")},
        }
    }
if "sqlite" in DATABASES["default"]["ENGINE"] and str(DATABASES["default"]["NAME"]) not in ("", ":memory:"):
    # Sessions live in this file: readable by its user only, -wal and -shm included.
    files.private_sqlite(Path(DATABASES["default"]["NAME"]))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/dashboard/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = RUN_DIR / "static"

# Redis serves both the Celery broker and the channel layer.
REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1:6379/0", ("redis", "rediss", "unix"))
# Every Redis key, queue and group of this hub starts with its namespace, so hubs sharing a Redis
# never see each other's tasks or events. Default: a hash of the database's identity (so every
# process of one hub derives the same name, and two hubs on two databases never do).
AGENTCOM_NAMESPACE = env_name("AGENTCOM_NAMESPACE", hub_namespace(run_dir=RUN_DIR))
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # redis-py 8 caps a pool at 100 connections and then raises; a burst of dashboards
            # connecting at once (group_add per socket) needs more.
            # redis-py 8 also times a read out after 5 s, exactly as long as channels-redis's
            # blocking pop waits: idle sockets then died with TimeoutError. Read longer.
            "hosts": [
                {
                    "address": REDIS_URL,
                    "max_connections": env_int("REDIS_MAX_CONNECTIONS", 1000, minimum=10),
                    "socket_timeout": 30,
                    "socket_connect_timeout": 5,
                }
            ],
            "prefix": env_name("AGENTCOM_CHANNEL_PREFIX", AGENTCOM_NAMESPACE),
            "capacity": 1000,
            "expiry": 30,
        },
    }
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = env_name("AGENTCOM_CELERY_QUEUE", AGENTCOM_NAMESPACE)
# kombu's own keys (bindings, unacked, remote control) under the namespace too.
CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": f"{AGENTCOM_NAMESPACE}:"}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = False
CELERY_TIMEZONE = "UTC"

# The registry's own knobs (units in the names).
PROBE_INTERVAL_SECONDS = env_float("PROBE_INTERVAL_SECONDS", 15.0, minimum=1.0)
PROBE_TIMEOUT_SECONDS = env_float("PROBE_TIMEOUT_SECONDS", 5.0, minimum=0.1)
PROBE_CHUNK_SIZE = env_int("PROBE_CHUNK_SIZE", 100, minimum=1)
# A sweep's chunks start evenly across this share of the interval (0: all at once): a steady
# trickle of probes instead of one burst that takes the CPU from the report path.
PROBE_SPREAD_FRACTION = min(env_float("PROBE_SPREAD_FRACTION", 0.5, minimum=0.0), 0.9)
PROBE_ON_REGISTER = env_bool("PROBE_ON_REGISTER", True)
# A PEM file of CA certificates that https endpoints' certificates are verified against,
# instead of the system store (a private CA); read at start-up to refuse a bad path or file.
PROBE_CA_BUNDLE = env_ca_bundle("PROBE_CA_BUNDLE")
UNHEALTHY_AFTER_FAILURES = env_int("UNHEALTHY_AFTER_FAILURES", 2, minimum=1)
STALE_AFTER_SECONDS = env_int("STALE_AFTER_SECONDS", 90, minimum=1)
RESOURCE_RETENTION_HOURS = env_float("RESOURCE_RETENTION_HOURS", 24.0, minimum=0.01)
# Events (status changes, models, registrations, silent sidecars) are kept this long.
EVENT_RETENTION_DAYS = env_float("EVENT_RETENTION_DAYS", 30.0, minimum=7.0)  # uptime_7d reads a week
# How often beat looks for sidecars that went silent (a host_silent event within this of the
# STALE_AFTER_SECONDS mark).
HOST_SILENCE_CHECK_SECONDS = max(1.0, min(30.0, STALE_AFTER_SECONDS / 3))
# Proxies (networks) whose X-Forwarded-For names the real client: a sidecar behind one is judged
# by its own address when it advertises its Ollama.
# Login lockouts count per client by the same rule (agentcom_site/lockout.py).
REGISTRY_TRUSTED_PROXIES = env_str("REGISTRY_TRUSTED_PROXIES", "")
env_parsed("REGISTRY_TRUSTED_PROXIES", "", lambda text: parse_networks(text) if text else [])
RESOURCE_HISTORY_SECONDS = env_float("RESOURCE_HISTORY_SECONDS", 60.0, minimum=0.0)
# Days of downsampled history kept (15-minute min/avg/max per host and per endpoint).
HISTORY_RETENTION_DAYS = env_float("HISTORY_RETENTION_DAYS", 30.0, minimum=0.01)
# A revoked token stops working in every process within this time (tokens are cached in memory).
TOKEN_CACHE_SECONDS = env_float("TOKEN_CACHE_SECONDS", 5.0, minimum=0.0)
# GET /api/v1/route answers from an index in each process, read again when older than this
# (changes made in the same process drop it at once).
ROUTE_CACHE_SECONDS = env_float("ROUTE_CACHE_SECONDS", 1.0, minimum=0.0)
# Sidecar reports waiting to be written (per web process) beyond which the hub answers 503.
REPORT_QUEUE_MAX = env_int("REPORT_QUEUE_MAX", 2000, minimum=1)
# A report that could not be written within this time is refused with 503 (nothing stored).
REPORT_MAX_WAIT_SECONDS = env_float("REPORT_MAX_WAIT_SECONDS", 2.0, minimum=0.1)
# daphne freezes what start-up built, collects garbage less often and hands the GIL to its
# database threads sooner (agentcom_site/tuning.py); false keeps CPython's defaults.
INTERPRETER_TUNING = env_bool("INTERPRETER_TUNING", True)
REGISTRY_ALLOWED_NETWORKS = env_str("REGISTRY_ALLOWED_NETWORKS", DEFAULT_ALLOWED_NETWORKS)
env_parsed("REGISTRY_ALLOWED_NETWORKS", DEFAULT_ALLOWED_NETWORKS, parse_networks)  # refuse `banana` here
# Scrapers that may read /metrics without a token (CIDR list); empty: an admin or metrics token only.
METRICS_ALLOWED_IPS = env_str("METRICS_ALLOWED_IPS", "")
env_parsed("METRICS_ALLOWED_IPS", "", lambda text: parse_networks(text) if text else [])
DASHBOARD_MAX_FRAMES_PER_SECOND = env_float("DASHBOARD_MAX_FRAMES_PER_SECOND", 4.0, minimum=0.5)
PUBLISH_MAX_EVENTS_PER_SECOND = env_float("PUBLISH_MAX_EVENTS_PER_SECOND", 10.0, minimum=0.5)
# An open dashboard re-checks its session this often (expiry); logout and permission changes
# reach it at once.
DASHBOARD_SESSION_CHECK_SECONDS = env_float("DASHBOARD_SESSION_CHECK_SECONDS", 30.0, minimum=0.5)

# Alerts (registry/services/alerts.py): Apprise URLs and a signed JSON webhook, besides the targets
# kept in the database (Django admin). Targets are the operator's: not limited to
# REGISTRY_ALLOWED_NETWORKS.
ALERT_URLS = env_url_list("ALERT_URLS")
ALERT_WEBHOOK_URL = env_str("ALERT_WEBHOOK_URL", "")
ALERT_WEBHOOK_SECRET = env_str("ALERT_WEBHOOK_SECRET", "")
if ALERT_WEBHOOK_URL:
    env_url("ALERT_WEBHOOK_URL", "", ("http", "https"))
    if not ALERT_WEBHOOK_SECRET:
        raise ImproperlyConfigured(
            "ALERT_WEBHOOK_URL needs ALERT_WEBHOOK_SECRET: receivers check the signature with it"
        )
# Transitions within this many seconds of the first go out as one message (per host and kind). The
# endpoints of a host that dies fail in the same sweep, within a second or two of each other; short
# enough that a message leaves within 5 s of the transition.
ALERT_GROUP_SECONDS = env_float("ALERT_GROUP_SECONDS", 3.0)
# An endpoint with this many status changes within the window is reported once as flapping,
# then kept quiet until it has not changed for the window.
ALERT_FLAP_TRANSITIONS = env_int("ALERT_FLAP_TRANSITIONS", 4, minimum=2)
ALERT_FLAP_WINDOW_SECONDS = env_float("ALERT_FLAP_WINDOW_SECONDS", 600.0, minimum=1.0)
# Deadline of one send (connect and read); a target that hangs holds a worker thread at most this long.
ALERT_TIMEOUT_SECONDS = env_float("ALERT_TIMEOUT_SECONDS", 5.0, minimum=0.1)
# Tries per alert and target (retries back off exponentially, at most 5 minutes apart).
ALERT_MAX_ATTEMPTS = env_int("ALERT_MAX_ATTEMPTS", 8, minimum=1)
# Sent alerts (and their delivery records, shown in Django admin) are kept this long.
ALERT_RETENTION_DAYS = env_float("ALERT_RETENTION_DAYS", 30.0, minimum=0.01)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_log_level("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},  # one line per request is noise at fleet scale
        "axes": {"level": "WARNING"},  # lockouts are logged at WARNING; every login at INFO is noise
    },
}

CELERY_BEAT_SCHEDULE = {
    "probe-sweep": {
        "task": "registry.tasks.probe_sweep",
        "schedule": PROBE_INTERVAL_SECONDS,
        # A sweep that cannot start before the next tick is dropped, not piled up.
        "options": {"expires": PROBE_INTERVAL_SECONDS},
    },
    "find-silent-hosts": {
        "task": "registry.tasks.find_silent_hosts",
        "schedule": HOST_SILENCE_CHECK_SECONDS,
        "options": {"expires": HOST_SILENCE_CHECK_SECONDS},
    },
    # Picks up alert events whose processing task was lost (broker away) and flapping endpoints
    # that have become stable; prunes old alerts.
    "alert-sweep": {
        "task": "registry.tasks.alert_sweep",
        "schedule": 60.0,
        "options": {"expires": 60.0},
    },
    # Probe chunks' latency samples become per-endpoint minutes, closed 15-minute buckets of
    # history become aggregates (idempotent; the newest stretch is read raw).
    "roll-up-history": {
        "task": "registry.tasks.roll_up_history",
        "schedule": 60.0,
        "options": {"expires": 60.0},
    },
    "prune-resource-history": {
        "task": "registry.tasks.prune_history",
        "schedule": 600.0,
        "options": {"expires": 600.0},
    },
}
# Request bodies: a bulk registration of 1,000 endpoints fits; anything larger is refused (413).
DATA_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024

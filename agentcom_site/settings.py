"""Settings for the AgentCom LLM Registry, read from the environment (see .env.example)."""

from __future__ import annotations

import secrets
from pathlib import Path

import dj_database_url

from agentcom_site.env import env_bool, env_float, env_int, env_list, env_str
from registry.ollama import DEFAULT_ALLOWED_NETWORKS

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = Path(env_str("AGENTCOM_RUN_DIR", str(BASE_DIR / "run")))
RUN_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """Use DJANGO_SECRET_KEY, else a key generated once and kept in the run folder."""
    key = env_str("DJANGO_SECRET_KEY", "")
    if key:
        return key
    path = RUN_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

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
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

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
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
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
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
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
            "prefix": env_str("AGENTCOM_CHANNEL_PREFIX", "asgi"),
            "capacity": 1000,
            "expiry": 30,
        },
    }
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = env_str("AGENTCOM_CELERY_QUEUE", "agentcom")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = False
CELERY_TIMEZONE = "UTC"

# The registry's own knobs (units in the names).
PROBE_INTERVAL_SECONDS = env_float("PROBE_INTERVAL_SECONDS", 15.0, minimum=1.0)
PROBE_TIMEOUT_SECONDS = env_float("PROBE_TIMEOUT_SECONDS", 5.0, minimum=0.1)
PROBE_CHUNK_SIZE = env_int("PROBE_CHUNK_SIZE", 250, minimum=1)
PROBE_ON_REGISTER = env_bool("PROBE_ON_REGISTER", True)
UNHEALTHY_AFTER_FAILURES = env_int("UNHEALTHY_AFTER_FAILURES", 2, minimum=1)
STALE_AFTER_SECONDS = env_int("STALE_AFTER_SECONDS", 90, minimum=1)
RESOURCE_RETENTION_HOURS = env_float("RESOURCE_RETENTION_HOURS", 24.0, minimum=0.01)
# Proxies (networks) whose X-Forwarded-For names the real client: a sidecar behind one is judged
# by its own address when it advertises its Ollama.
REGISTRY_TRUSTED_PROXIES = env_str("REGISTRY_TRUSTED_PROXIES", "")
RESOURCE_HISTORY_SECONDS = env_float("RESOURCE_HISTORY_SECONDS", 60.0, minimum=0.0)
# A revoked token stops working in every process within this time (tokens are cached in memory).
TOKEN_CACHE_SECONDS = env_float("TOKEN_CACHE_SECONDS", 5.0, minimum=0.0)
# Sidecar reports waiting to be written (per web process) beyond which the hub answers 503.
REPORT_QUEUE_MAX = env_int("REPORT_QUEUE_MAX", 2000, minimum=1)
# A report that could not be written within this time is refused with 503 (nothing stored).
REPORT_MAX_WAIT_SECONDS = env_float("REPORT_MAX_WAIT_SECONDS", 2.0, minimum=0.1)
REGISTRY_ALLOWED_NETWORKS = env_str("REGISTRY_ALLOWED_NETWORKS", DEFAULT_ALLOWED_NETWORKS)
DASHBOARD_MAX_FRAMES_PER_SECOND = env_float("DASHBOARD_MAX_FRAMES_PER_SECOND", 4.0, minimum=0.5)
PUBLISH_MAX_EVENTS_PER_SECOND = env_float("PUBLISH_MAX_EVENTS_PER_SECOND", 10.0, minimum=0.5)
# An open dashboard re-checks its session this often (expiry); logout and permission changes
# reach it at once.
DASHBOARD_SESSION_CHECK_SECONDS = env_float("DASHBOARD_SESSION_CHECK_SECONDS", 30.0, minimum=0.5)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},  # one line per request is noise at fleet scale
    },
}

CELERY_BEAT_SCHEDULE = {
    "probe-sweep": {
        "task": "registry.tasks.probe_sweep",
        "schedule": PROBE_INTERVAL_SECONDS,
        # A sweep that cannot start before the next tick is dropped, not piled up.
        "options": {"expires": PROBE_INTERVAL_SECONDS},
    },
    "prune-resource-history": {
        "task": "registry.tasks.prune_history",
        "schedule": 600.0,
        "options": {"expires": 600.0},
    },
}
# Request bodies: a bulk registration of 1,000 endpoints fits; anything larger is refused (413).
DATA_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024

"""Settings, read from the environment and an optional `.env` beside `manage.py`.

Production mode is `DEBUG` off (the default): then `SECRET_KEY` and `ENCRYPTION_KEYS` are required and the process
refuses to start, with a one-line explanation, when either is missing.
"""

import ipaddress
import sys
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# ENV_FILE names another file to read instead (or /dev/null for none); the real environment always wins.
environ.Env.read_env(env.str("ENV_FILE", default=str(BASE_DIR / ".env")), overwrite=False)


def refuse_to_start(reason: str) -> None:
    """Stop the process with one line on stderr instead of a traceback."""
    sys.stderr.write(f"llm-proxy: refusing to start: {reason}\n")
    raise SystemExit(2)


DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        refuse_to_start("SECRET_KEY is not set (put it in the environment or .env; `make run` writes one).")
    SECRET_KEY = "insecure-development-only-secret-key"

ENCRYPTION_KEYS = env.list("ENCRYPTION_KEYS", default=[])
if not ENCRYPTION_KEYS:
    if not DEBUG:
        refuse_to_start(
            "ENCRYPTION_KEYS is not set (comma-separated Fernet keys, newest first; `make run` writes one)."
        )
    # A fixed development key, so DEBUG works with no set-up; never used in production mode.
    ENCRYPTION_KEYS = ["ZGV2ZWxvcG1lbnQtb25seS1rZXktMzJieXRlcy0hISE="]

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
PORT = env.int("PORT", default=8000)

UPSTREAM_BASE_URL = env.str("UPSTREAM_BASE_URL", default="https://api.openai.com/v1").rstrip("/")
MANAGEMENT_TOKEN = env.str("MANAGEMENT_TOKEN", default="")
# How GET /manage/projects and /manage/tokens answer: `paginated` ({"projects": [...], "pagination": {...}}), or
# `array`, the Go LLM Proxy's bare JSON array of every item, for deployments that keep its scripts.
MANAGE_API_LIST_FORMAT = env.str("MANAGE_API_LIST_FORMAT", default="paginated").lower()
if MANAGE_API_LIST_FORMAT not in ("paginated", "array"):
    refuse_to_start("MANAGE_API_LIST_FORMAT must be 'paginated' or 'array'.")

INSTALLED_APPS = [
    "llmproxy.apps.AdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "auditlog",
    "llmproxy.apps.LLMProxyConfig",
    "projects",
    "tokens",
    "proxy",
    "importer",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "llmproxy.urls"
ASGI_APPLICATION = "llmproxy.asgi.application"

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

# --- Database -------------------------------------------------------------------------------------------------
# SQLite by default (a file under data/, no set-up); PostgreSQL through psycopg 3 with its connection pool.
(BASE_DIR / "data").mkdir(exist_ok=True)
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'data' / 'llmproxy.sqlite3'}")}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["OPTIONS"] = {
        # IMMEDIATE takes the write lock at BEGIN, so concurrent writers queue instead of failing mid-transaction.
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        # temp_store: a statement's rollback journal (an upsert's, an insert's of several rows) in memory, not in a
        # temporary file created, written (60 KiB) and removed by each usage batch.
        "init_command": (
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000; PRAGMA temp_store=MEMORY;"
        ),
    }
    # Tests that run a real server in another process need the test database in a file, not in memory.
    _db["TEST"] = {"NAME": str(BASE_DIR / "data" / env.str("TEST_DATABASE_NAME", default="test.sqlite3"))}
elif _db["ENGINE"] == "django.db.backends.postgresql":
    _db["CONN_MAX_AGE"] = 0  # the pool keeps connections; Django must hand them back after each request
    # A pooled connection the database (or a pooler, a NAT gateway, an idle timeout) has ended is found and replaced
    # when the pool hands it out, not used to fail a request.
    _db["CONN_HEALTH_CHECKS"] = True
    _db["OPTIONS"] = {
        **_db.get("OPTIONS", {}),
        "connect_timeout": env.int("DATABASE_CONNECT_TIMEOUT", default=5),
        "pool": {
            "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=2),
            "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=20),
            "timeout": env.float("DATABASE_POOL_TIMEOUT", default=10.0),
            # Reconnection attempts back off; past this many seconds the pool starts afresh on the next request,
            # so it is back within a request of the database's return instead of after a backoff of minutes.
            "reconnect_timeout": env.float("DATABASE_RECONNECT_TIMEOUT", default=5.0),
        },
    }
    if env.str("TEST_DATABASE_NAME", default=""):
        _db["TEST"] = {"NAME": env.str("TEST_DATABASE_NAME")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# --- Static files: collected to STATIC_ROOT and served by the app itself (llmproxy.asgi) --------------------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "data" / "static"

LOGIN_URL = "admin:login"

# --- Security --------------------------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
if env.bool("BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Served over HTTPS only (the README's production configuration): plain-HTTP requests are redirected, but for the
# health checks, which a load balancer probes over plain HTTP; HSTS tells browsers to come back over HTTPS only.
# The proxy's /v1/ has no redirect (a redirected POST would lose its body): close plain HTTP in the TLS proxy.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^health$", r"^ready$", r"^live$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)

# --- Admin login throttling (llmproxy.security.throttle) -------------------------------------------------------
# Every login goes through this backend: it refuses locked user names and addresses before any password is hashed,
# and bounds the hashing each worker does for logins.
AUTHENTICATION_BACKENDS = ["llmproxy.security.backends.ThrottledModelBackend"]
# This many failed logins for one user name, or from one client address, within the window lock it.
LOGIN_MAX_FAILURES_PER_USER = env.int("LOGIN_MAX_FAILURES_PER_USER", default=10)
LOGIN_MAX_FAILURES_PER_ADDRESS = env.int("LOGIN_MAX_FAILURES_PER_ADDRESS", default=50)
LOGIN_FAILURE_WINDOW_MINUTES = env.int("LOGIN_FAILURE_WINDOW_MINUTES", default=15)
# The first lockout lasts LOGIN_LOCKOUT_MINUTES; one that begins within LOGIN_LOCKOUT_REPEAT_HOURS of the end of the
# previous one lasts twice as long as that one, up to LOGIN_LOCKOUT_MAX_MINUTES.
LOGIN_LOCKOUT_MINUTES = env.int("LOGIN_LOCKOUT_MINUTES", default=15)
LOGIN_LOCKOUT_MAX_MINUTES = env.int("LOGIN_LOCKOUT_MAX_MINUTES", default=24 * 60)
LOGIN_LOCKOUT_REPEAT_HOURS = env.int("LOGIN_LOCKOUT_REPEAT_HOURS", default=24)
# Per worker process: password checks for logins run one at a time, at most this many a minute after a burst of
# LOGIN_PASSWORD_CHECKS_BURST; an attempt over that is refused ("try again in a moment") without hashing.
LOGIN_PASSWORD_CHECKS_PER_MINUTE = env.float("LOGIN_PASSWORD_CHECKS_PER_MINUTE", default=12.0)
LOGIN_PASSWORD_CHECKS_BURST = env.int("LOGIN_PASSWORD_CHECKS_BURST", default=5)
# A login refused by the throttle (locked, or over the bound) is answered after this many seconds: a client looping on
# the login page then makes few attempts a second, whatever their cost.
LOGIN_REFUSAL_DELAY_SECONDS = env.float("LOGIN_REFUSAL_DELAY_SECONDS", default=1.0)
if (
    min(LOGIN_MAX_FAILURES_PER_USER, LOGIN_MAX_FAILURES_PER_ADDRESS, LOGIN_FAILURE_WINDOW_MINUTES) < 1
    or min(LOGIN_LOCKOUT_MINUTES, LOGIN_LOCKOUT_REPEAT_HOURS, LOGIN_PASSWORD_CHECKS_BURST) < 1
    or LOGIN_LOCKOUT_MAX_MINUTES < LOGIN_LOCKOUT_MINUTES
    or LOGIN_PASSWORD_CHECKS_PER_MINUTE <= 0
    or LOGIN_REFUSAL_DELAY_SECONDS < 0
):
    refuse_to_start(
        "the LOGIN_* limits must be at least 1 (LOGIN_PASSWORD_CHECKS_PER_MINUTE above 0, "
        "LOGIN_REFUSAL_DELAY_SECONDS not negative), and LOGIN_LOCKOUT_MAX_MINUTES at least LOGIN_LOCKOUT_MINUTES."
    )

# --- Audit -----------------------------------------------------------------------------------------------------
# The remote address is set by our own services from REMOTE_ADDR; never trust a client's X-Forwarded-For.
AUDITLOG_DISABLE_REMOTE_ADDR = False
AUDITLOG_STORE_JSON_CHANGES = True

# --- Tokens ----------------------------------------------------------------------------------------------------
TOKEN_MAX_DURATION_HOURS = env.int("TOKEN_MAX_DURATION_HOURS", default=24 * 365)
TOKEN_MAX_REQUESTS = env.int("TOKEN_MAX_REQUESTS", default=1_000_000_000)

# --- Proxy -----------------------------------------------------------------------------------------------------
PROXY_ALLOWED_ENDPOINTS = env.list(
    "PROXY_ALLOWED_ENDPOINTS",
    default=[
        "POST /chat/completions",
        "POST /completions",
        "POST /embeddings",
        "GET /models",
        "GET /models/*",
        "POST /moderations",
        "POST /images/generations",
        "POST /images/edits",
        "POST /images/variations",
        "POST /audio/speech",
        "POST /audio/transcriptions",
        "POST /audio/translations",
        "GET /files",
        "POST /files",
        "GET /files/*",
        "DELETE /files/*",
        "GET /files/*/content",
        "POST /responses",
        "GET /responses/*",
        "DELETE /responses/*",
        "POST /responses/*/cancel",
        "GET /responses/*/input_items",
        "POST /messages",
        "POST /messages/count_tokens",
    ],
)
PROXY_MAX_BODY_BYTES = env.int("PROXY_MAX_BODY_BYTES", default=32 * 1024 * 1024)
PROXY_CONNECT_TIMEOUT = env.float("PROXY_CONNECT_TIMEOUT", default=10.0)
PROXY_READ_TIMEOUT = env.float("PROXY_READ_TIMEOUT", default=600.0)
PROXY_CORS_ALLOWED_ORIGINS = env.list("PROXY_CORS_ALLOWED_ORIGINS", default=[])
PROXY_CORS_MAX_AGE = env.int("PROXY_CORS_MAX_AGE", default=7200)
# How long a worker answers preflights from its copy of the origins projects allow (the real request is always
# checked against its own project's list, read with the token).
PROXY_CORS_PROJECT_ORIGINS_SECONDS = env.float("PROXY_CORS_PROJECT_ORIGINS_SECONDS", default=10.0)
# JSON bodies up to this size are read for their model and whether they stream; larger ones pass untouched.
PROXY_INSPECT_MAX_BYTES = env.int("PROXY_INSPECT_MAX_BYTES", default=4 * 1024 * 1024)
# Threads (per worker) that write usage and, on SQLite, run admission statements; each has its own connection.
PROXY_DB_THREADS = env.int("PROXY_DB_THREADS", default=4)
# PostgreSQL: async connections (per worker) on which admission statements run from the event loop.
PROXY_ADMISSION_CONNECTIONS = env.int("PROXY_ADMISSION_CONNECTIONS", default=4)
# PostgreSQL: the proxy's own statements on those connections are prepared on each (parsed and planned once, not per
# request). Off for a pooler that cannot keep prepared statements (PgBouncer in transaction mode before 1.21, or
# with max_prepared_statements = 0).
PROXY_PREPARED_STATEMENTS = env.bool("PROXY_PREPARED_STATEMENTS", default=True)
PROXY_UPSTREAM_MAX_CONNECTIONS = env.int("PROXY_UPSTREAM_MAX_CONNECTIONS", default=2000)
PROXY_UPSTREAM_MAX_KEEPALIVE = env.int("PROXY_UPSTREAM_MAX_KEEPALIVE", default=128)
# Where a project's own upstream URL may point (llmproxy.egress; the global UPSTREAM_BASE_URL is trusted as it is).
# Host names (or IP literals) whose upstream may be plain http://, e.g. `127.0.0.1,vllm.internal`:
UPSTREAM_ALLOW_HTTP_HOSTS = [
    host.strip().strip("[]").lower() for host in env.list("UPSTREAM_ALLOW_HTTP_HOSTS", default=[]) if host.strip()
]
# Private networks (CIDRs, IPv4 or IPv6) an upstream may be in, e.g. `10.0.0.0/8,fd12:3456::/48`; link-local and
# cloud metadata addresses are refused whatever this says.
UPSTREAM_ALLOW_PRIVATE_NETWORKS = [
    network.strip() for network in env.list("UPSTREAM_ALLOW_PRIVATE_NETWORKS", default=[]) if network.strip()
]
for _network in UPSTREAM_ALLOW_PRIVATE_NETWORKS:
    try:
        ipaddress.ip_network(_network)
    except ValueError as _exc:
        refuse_to_start(
            f"UPSTREAM_ALLOW_PRIVATE_NETWORKS: {_network!r} is not a network ({_exc}); "
            "write it like 10.0.0.0/8 or fd12:3456::/48."
        )
# Seconds each process keeps its copy of the model price table (proxy.prices): a price change is used by every
# worker of every instance within this time; lookups never wait on the database.
PRICE_CACHE_SECONDS = env.float("PRICE_CACHE_SECONDS", default=5.0)
if PRICE_CACHE_SECONDS < 0:
    refuse_to_start("PRICE_CACHE_SECONDS must be 0 or more.")

# --- Response cache (proxy.cache) -------------------------------------------------------------------------------
# Off per project unless its cache mode says otherwise. CACHE_URL=redis://host:6379/0 keeps the answers in Redis
# (shared by every worker and instance); without it they are kept in the database (the proxy_cacheentry table).
CACHE_URL = env.str("CACHE_URL", default="")
if CACHE_URL and not CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
    refuse_to_start("CACHE_URL must be a redis://, rediss:// or unix:// URL (or empty: the database keeps the cache).")
# Answers larger than this are not stored (their request is answered all the same).
CACHE_MAX_ENTRY_BYTES = env.int("CACHE_MAX_ENTRY_BYTES", default=2 * 1024 * 1024)
# Redis keys begin with this, so one Redis can serve other programs (or several deployments) too.
CACHE_KEY_PREFIX = env.str("CACHE_KEY_PREFIX", default="llmproxy:cache:")

# --- Limits against hostile clients ----------------------------------------------------------------------------
# Enforced by the server before a request reaches the app: the body limit in the ASGI layer (llmproxy.body_limit;
# `/v1/` has PROXY_MAX_BODY_BYTES instead), the others by the HTTP protocol of the workers (llmproxy.server).
MAX_REQUEST_BODY_BYTES = env.int("MAX_REQUEST_BODY_BYTES", default=1024 * 1024)
# The request head: its bytes (request line and header lines) and its number of headers; 431 beyond.
MAX_REQUEST_HEADER_BYTES = env.int("MAX_REQUEST_HEADER_BYTES", default=16 * 1024)
MAX_REQUEST_HEADERS = env.int("MAX_REQUEST_HEADERS", default=100)
# Seconds a connection has to send a whole request head (from its start, or from the first byte of a later one).
REQUEST_HEAD_TIMEOUT = env.float("REQUEST_HEAD_TIMEOUT", default=30.0)
# Connections a worker holds at once (each may need three descriptors: see llmproxy.server); 503 beyond.
MAX_CONNECTIONS_PER_WORKER = env.int("MAX_CONNECTIONS_PER_WORKER", default=1000)
if min(MAX_REQUEST_BODY_BYTES, MAX_REQUEST_HEADER_BYTES, MAX_REQUEST_HEADERS, MAX_CONNECTIONS_PER_WORKER) < 1:
    refuse_to_start(
        "MAX_REQUEST_BODY_BYTES, MAX_REQUEST_HEADER_BYTES, MAX_REQUEST_HEADERS and "
        "MAX_CONNECTIONS_PER_WORKER must be at least 1."
    )
if REQUEST_HEAD_TIMEOUT <= 0:
    refuse_to_start("REQUEST_HEAD_TIMEOUT must be more than 0 seconds.")
# Django's own check on a body it reads must never refuse one the server let through, on either kind of path.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(MAX_REQUEST_BODY_BYTES, PROXY_MAX_BODY_BYTES)

# --- Usage -----------------------------------------------------------------------------------------------------
# Usage records and security events older than this many days are deleted by `manage.py purge_usage` (run it
# daily); the per-day usage sums are kept, so charts and summaries over older periods stay right.
USAGE_RETENTION_DAYS = env.int("USAGE_RETENTION_DAYS", default=90)
# Where each worker keeps usage records while the database cannot take them, until they are written (proxy.spill).
# Local to the instance; it must survive a restart of the process (a volume, in a container).
USAGE_SPILL_DIR = env.str("USAGE_SPILL_DIR", default=str(BASE_DIR / "data" / "spill"))
# Budget alerts (a project's spend crossing 80 % and 100 % of its budget) are also posted here as JSON, when set.
ALERT_WEBHOOK_URL = env.str("ALERT_WEBHOOK_URL", default="")
if USAGE_RETENTION_DAYS < 1:
    refuse_to_start("USAGE_RETENTION_DAYS must be at least 1.")

# --- Observability ---------------------------------------------------------------------------------------------
# Prometheus metrics at /metrics (proxy.metrics): 404 when disabled; with METRICS_TOKEN set, only for
# `Authorization: Bearer <METRICS_TOKEN>`. At most METRICS_MAX_MODELS distinct model label values per worker.
METRICS_ENABLED = env.bool("METRICS_ENABLED", default=True)
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_MAX_MODELS = env.int("METRICS_MAX_MODELS", default=100)
# Log lines as plain text (default) or one JSON object per line; gunicorn.conf.py reads the same variable.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain").lower()
if LOG_FORMAT not in ("plain", "json"):
    refuse_to_start("LOG_FORMAT must be 'plain' or 'json'.")
# One line per proxied request on the `proxy.access` logger, whatever LOG_LEVEL says.
PROXY_ACCESS_LOG = env.bool("PROXY_ACCESS_LOG", default=True)
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "llmproxy.logs.TextFormatter", "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "llmproxy.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "proxy.access": {"level": "INFO" if PROXY_ACCESS_LOG else "CRITICAL"},
    },
}

"""gunicorn settings: uvicorn workers serving the ASGI app. Every value can be overridden from the environment."""

import os

bind = os.environ.get("BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "uvicorn_worker.UvicornWorker"
# Streams may run for many minutes; a graceful restart waits this long for them to finish.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "300"))
# Async workers heartbeat from their event loop; this only catches a wedged worker.
timeout = int(os.environ.get("WORKER_TIMEOUT", "120"))
keepalive = int(os.environ.get("KEEPALIVE", "75"))
accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# Trust X-Forwarded-* only from a proxy the operator names (default: none, so REMOTE_ADDR is the real peer).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

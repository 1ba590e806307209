"""gunicorn settings: uvicorn workers serving the ASGI app. Every value can be overridden from the environment."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

from llmproxy.server import raise_descriptor_limit

bind = os.environ.get("BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# uvicorn workers whose HTTP protocol bounds the request head and the connections they hold (llmproxy.server).
worker_class = "llmproxy.server.LimitedUvicornWorker"
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

# --- Descriptors: every connection needs some (llmproxy.server), so the soft limit goes up to the hard one, here in
# the master, for the workers to inherit.
raise_descriptor_limit()

# --- Logs: LOG_FORMAT=json makes gunicorn's own lines (and uvicorn's, which go through them) JSON like the app's.
if os.environ.get("LOG_FORMAT", "plain").lower() == "json":
    from llmproxy.logs import JsonFormatter

    logconfig_dict = {
        "root": {"level": "INFO", "handlers": ["error_console"]},
        "loggers": {
            "gunicorn.error": {"level": loglevel.upper(), "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {
                "level": "INFO",
                "handlers": ["access"] if accesslog else [],
                "propagate": False,
            },
        },
        "handlers": {
            "error_console": {"class": "logging.StreamHandler", "formatter": "json", "stream": sys.stderr},
            **(
                {
                    "access": {"class": "logging.StreamHandler", "formatter": "json", "stream": sys.stdout}
                    if accesslog == "-"
                    else {"class": "logging.FileHandler", "formatter": "json", "filename": accesslog}
                }
                if accesslog
                else {}
            ),
        },
        "formatters": {"json": {"()": JsonFormatter}},
    }


# --- Prometheus metrics from every worker (proxy.metrics): each worker writes its values to files in
# PROMETHEUS_MULTIPROC_DIR and /metrics adds them up. The directory must start empty (old files would add old counts).
# A reload (SIGHUP) runs this file again, but not on_starting: the directory made at start is remembered in the
# master's environment, which outlives the reload (a module-level variable would not), so on_exit still removes it.
_CREATED_METRICS_DIR = "LLMPROXY_CREATED_METRICS_DIR"


def on_starting(server) -> None:
    """Before any worker starts: a fresh temporary directory when none is named, else the named one emptied."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for stale in Path(directory).glob("*.db"):
            stale.unlink()
    else:
        directory = tempfile.mkdtemp(prefix="llmproxy-metrics-")
        os.environ[_CREATED_METRICS_DIR] = directory
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # inherited by the workers, also those after a reload
    # Imported here (after the directory is set), not in child_exit: that runs in a signal handler, and a second
    # worker exiting during the first one's import would find the module half imported.
    from prometheus_client import multiprocess  # noqa: F401


def child_exit(server, worker) -> None:
    """A worker's gauges (streams in flight) stop counting when it exits; its counters stay in the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if directory := os.environ.pop(_CREATED_METRICS_DIR, ""):
        shutil.rmtree(directory, ignore_errors=True)

"""Several instances behind a load balancer, on one PostgreSQL: `python deploy/cluster.py --instances 3`.

Starts N instances of the server (separate gunicorn masters with uvicorn workers, on ports next to each other, each
with its own spill directory), then HAProxy in front of them (`deploy/haproxy.cfg` with the instances filled in),
and serves until interrupted. Every instance reads the same settings from the environment (or `.env`): put the
PostgreSQL URL in DATABASE_URL, and the same SECRET_KEY, ENCRYPTION_KEYS and MANAGEMENT_TOKEN everywhere. Run
`manage.py migrate` once before. The instances share nothing but the database, which is what makes them one:
every admission is one statement there.

HAProxy rather than nginx: active health checks in the open-source edition (an instance that stops answering
`/healthz` is out of rotation within 3 s, and back as soon as it answers), `leastconn` balancing that suits
long-lived streams, and retries of a request only when the connection to an instance failed (so a request an
instance may have admitted is never sent twice).
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "haproxy.cfg"


def _wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def _wait_until_serving(port: int, process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    """Until the instance answers `/healthz`: its port opens before its workers have booted, and a balancer that
    checks it meanwhile (three checks timing out) takes it out of rotation."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer /healthz on port {port} within {timeout} s")


def haproxy_config(port: int, instances: list[int]) -> str:
    servers = "\n".join(f"    server instance{i + 1} 127.0.0.1:{p} check" for i, p in enumerate(instances))
    return TEMPLATE.read_text().replace("{port}", str(port)).replace("{servers}", servers)


class Cluster:
    """N instances and the balancer; `stop()` ends them all."""

    def __init__(
        self,
        *,
        ports: list[int],
        port: int,
        env: dict | None = None,
        workdir: Path | None = None,
        workers: int = 2,
    ) -> None:
        if not shutil.which("haproxy"):
            raise RuntimeError("haproxy is not installed (Debian: apt-get install haproxy)")
        self.port = port
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="llmproxy-cluster-"))
        self.ports = ports
        self.instances: list[subprocess.Popen] = []
        self.balancer: subprocess.Popen | None = None
        base_env = {**os.environ, **(env or {})}
        try:
            for index, instance_port in enumerate(self.ports):
                log = (self.workdir / f"instance{index + 1}.log").open("w")
                self.instances.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "llmproxy.asgi:application"],
                        cwd=BASE_DIR,
                        env={
                            **base_env,
                            "BIND": f"127.0.0.1:{instance_port}",
                            "WEB_CONCURRENCY": str(workers),
                            "USAGE_SPILL_DIR": str(self.workdir / f"spill{index + 1}"),
                        },
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
                log.close()
            for index, (process, instance_port) in enumerate(zip(self.instances, self.ports, strict=True)):
                _wait_until_serving(instance_port, process, f"instance {index + 1}")
            config = self.workdir / "haproxy.cfg"
            config.write_text(haproxy_config(port, self.ports))
            log = (self.workdir / "haproxy.log").open("w")
            self.balancer = subprocess.Popen(
                ["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
            _wait_for_port(port, self.balancer, "haproxy")
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def instance_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    def workers(self, index: int) -> list[int]:
        from tests.live import child_pids

        return child_pids(self.instances[index].pid)

    def stop_instance(self, index: int, sig: int = signal.SIGTERM, wait: float = 60) -> None:
        process = self.instances[index]
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(wait)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def stop(self) -> None:
        if self.balancer is not None and self.balancer.poll() is None:
            self.balancer.terminate()
            self.balancer.wait(10)
        for index in range(len(self.instances)):
            self.stop_instance(index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")), help="the balancer's port")
    parser.add_argument("--base-port", type=int, default=8101, help="instance i listens on base-port + i")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    args = parser.parse_args()
    sys.path.insert(0, str(BASE_DIR))
    cluster = Cluster(
        ports=[args.base_port + i for i in range(args.instances)],
        port=args.port,
        workdir=BASE_DIR / "data" / "cluster",
        workers=args.workers,
    )
    print(f"{args.instances} instances on ports {cluster.ports[0]}–{cluster.ports[-1]}, balanced at {cluster.url}")
    print(f"logs and the generated haproxy.cfg in {cluster.workdir}; Ctrl-C stops everything")
    stop = False

    def interrupted(*_) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, interrupted)
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()

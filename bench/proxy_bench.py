"""Benchmark of the proxy against calling the upstream directly: `python bench/proxy_bench.py` (or `make bench`).

It starts the mock upstream (tests/mock_upstream.py, its own process) and the server as in production (gunicorn with
uvicorn workers, gunicorn.conf.py, DEBUG off) on a fresh database: PostgreSQL when DATABASE_URL names one (a
separate `<name>_bench_<pid>` database on that server, created and dropped here), else a new SQLite file under data/.
It seeds the projects and tokens each part needs, then prints, as ratios against the mock called directly:

- added latency at concurrency 1 (p50, p99), non-streamed chat completions;
- throughput at concurrency 32;
- time to first byte of a stream;
- 200 concurrent 3-second streams: failures, stream time against direct;
- throughput of a token with every limit (and a project with a budget) against an unlimited one (`limits`);
- latency and throughput of a token under a project policy (models, an alias, endpoints, origins, addresses)
  against one with none (`policy`);
- the server's peak RSS (gunicorn master and workers, from /proc);
- the response cache (`--parts cache`): p50 at concurrency 1 and throughput at 32 of cache hits, kept in the
  database and (when a Redis answers at 127.0.0.1:6379, or REDIS_URL) in Redis by a second server, against the
  uncached proxy and the mock called directly.

The load generator is a minimal HTTP/1.1 client on raw asyncio streams (keep-alive), so that its own cost stays
small next to what it measures. All traffic goes to 127.0.0.1.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from tests.live import child_pids, free_port  # noqa: E402

UPSTREAM_KEY = "sk-proj-benchbenchbenchbenchbenchbenchbench0000"
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}).encode()
STREAM = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}], "stream": True}
).encode()

TARGETS = {
    "added_p50_ms": 1.5,
    "throughput_ratio": 0.06,
    "stream_ratio": 1.05,
    "limits_ratio": 0.85,
    "policy_ratio": 0.95,
    "hit_speedup": 2.0,  # a hit at c=1 at least twice as fast as an uncached proxied request
    "hit_throughput_ratio": 1.0,  # hits at c=32 at least the uncached proxy's throughput
}
PARTS = ("latency", "throughput", "ttfb", "streams", "limits", "policy", "cache")
CACHE_HEADERS = {"Cache-Control": "max-age=3600"}
# The policy part's project: every list set, the request naming a model by its alias (the body is read and rewritten).
POLICY = {
    "allowed_models": ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"],
    "model_aliases": {"fast": "gpt-4o-mini"},
    "allowed_endpoints": ["POST /chat/completions", "POST /embeddings", "GET /models"],
    "allowed_origins": ["https://app.example.com"],
    "allowed_ips": ["127.0.0.0/8", "10.0.0.0/8"],
}
ALIASED_CHAT = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "Say hello"}]}).encode()


# --- a small HTTP/1.1 client ----------------------------------------------------------------------------------------
@dataclass
class Timing:
    status: int
    first_byte: float  # seconds from sending to the first body byte
    total: float  # seconds from sending to the last byte


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Timing:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        started = time.perf_counter()
        self.writer.write(head.encode() + body)
        try:
            return await self._response(started)
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.close()
            raise

    async def _response(self, started: float) -> Timing:
        reader = self.reader
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        first_byte = None
        if "content-length" in headers:
            await reader.readexactly(int(headers["content-length"]))
            first_byte = time.perf_counter()
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if first_byte is None:
                    first_byte = time.perf_counter()
                if size == 0:
                    break
        else:
            await reader.read()
            first_byte = time.perf_counter()
            await self.close()
        ended = time.perf_counter()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Timing(status, first_byte - started, ended - started)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclass
class Target:
    name: str
    host: str
    port: int
    prefix: str
    authorization: str
    body: bytes = CHAT
    origin: str = ""  # sent as Origin when set, as a browser app would
    always: tuple[tuple[str, str], ...] = ()  # headers on every request (a cache's opt-in)

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            "Authorization": self.authorization,
            "Content-Type": "application/json",
            **({"Origin": self.origin} if self.origin else {}),
            **dict(self.always),
            **(extra or {}),
        }


async def latency(target: Target, count: int, warmup: int) -> list[float]:
    connection = Connection(target.host, target.port)
    timings = []
    for i in range(warmup + count):
        timing = await connection.request("POST", f"{target.prefix}/chat/completions", target.headers(), target.body)
        assert timing.status == 200, timing
        if i >= warmup:
            timings.append(timing.total * 1000)
    await connection.close()
    return timings


async def throughput(target: Target, concurrency: int, seconds: float) -> tuple[float, int]:
    done, failed = 0, 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, failed
        connection = Connection(target.host, target.port)
        while time.perf_counter() < stop_at:
            try:
                timing = await connection.request(
                    "POST", f"{target.prefix}/chat/completions", target.headers(), target.body
                )
                done += timing.status == 200
                failed += timing.status != 200
            except (OSError, asyncio.IncompleteReadError):
                failed += 1
        await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started), failed


async def streams(target: Target, count: int, chunks: int, delay: float) -> tuple[list[Timing], int]:
    extra = {"x-mock-chunks": str(chunks), "x-mock-chunk-delay": str(delay)}

    async def one() -> Timing | None:
        connection = Connection(target.host, target.port)
        try:
            timing = await connection.request(
                "POST", f"{target.prefix}/chat/completions", target.headers(extra), STREAM
            )
            return timing if timing.status == 200 else None
        except (OSError, asyncio.IncompleteReadError):
            return None
        finally:
            await connection.close()

    results = await asyncio.gather(*(one() for _ in range(count)))
    ok = [r for r in results if r is not None]
    return ok, count - len(ok)


async def ttfb(target: Target, count: int) -> list[float]:
    connection = Connection(target.host, target.port)
    extra = {"x-mock-chunks": "3", "x-mock-chunk-delay": "0.02"}
    found = []
    for _ in range(count):
        timing = await connection.request("POST", f"{target.prefix}/chat/completions", target.headers(extra), STREAM)
        assert timing.status == 200, timing
        found.append(timing.first_byte * 1000)
    await connection.close()
    return found


# --- processes ------------------------------------------------------------------------------------------------------
class RssSampler(threading.Thread):
    """Peak of the summed RSS of a process and its children."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            total = sum(_rss_kib(p) for p in [self.pid, *child_pids(self.pid)])
            self.peak_kib = max(self.peak_kib, total)
            time.sleep(0.1)


def cpu_ns(pids) -> int:
    """CPU time so far of these processes, all their threads, in nanoseconds (/proc's `schedstat`: not rounded to
    clock ticks as `stat`'s user and system times are)."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


def server_cpu_seconds(pid: int) -> float:
    """CPU time of the server's workers so far: what a run cost the server, much less sensitive than throughput to
    what else the machine runs."""
    return cpu_ns(child_pids(pid)) / 1e9


async def throughput_and_cpu(target: Target, server_pid: int, seconds: float) -> tuple[float, float]:
    """Throughput at c=32 and the server's CPU milliseconds per request during it."""
    before = server_cpu_seconds(server_pid)
    started = time.perf_counter()
    rps, _ = await throughput(target, 32, seconds)
    done = rps * (time.perf_counter() - started)
    return rps, (server_cpu_seconds(server_pid) - before) * 1000 / max(done, 1)


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def database(bench_id: str) -> tuple[str, callable]:
    """A fresh database URL, and how to drop it afterwards."""
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        import psycopg

        parts = urlsplit(url)
        name = f"{parts.path.lstrip('/') or 'llmproxy'}_bench_{bench_id}"  # two runs at once never share one
        admin = parts._replace(path="/postgres").geturl().replace("postgres://", "postgresql://", 1)

        def run(sql: str) -> None:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql)

        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        run(f'CREATE DATABASE "{name}"')
        return parts._replace(path=f"/{name}").geturl(), lambda: run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    path = BASE_DIR / "data" / f"bench-{bench_id}.sqlite3"

    def remove() -> None:
        for suffix in ("", "-wal", "-shm", "-proxy.lock"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    remove()
    return f"sqlite:///{path}", remove


def seed(env: dict) -> tuple[str, str, str, str]:
    """Migrate, then create a project with an unlimited token, a project with every limit (out of reach: they
    are counted, never reached) with a token that has every limit too, a project with every policy list (that the
    bench's requests meet) with a token narrowing it, and a project with the response cache (opt-in) with an
    unlimited token; the four tokens' plaintexts. The bench's model gets a price, so its cost is computed and
    charged."""
    code = (
        "from datetime import timedelta\n"
        "from llmproxy.audit import Actor\n"
        "from projects.services import project_create\n"
        "from proxy.services import price_set\n"
        "from tokens.services import token_generate\n"
        "actor = Actor.cli('bench')\n"
        "price_set(model='gpt-4o-mini', input_per_million='0.15', cached_input_per_million='0.075',\n"
        "          output_per_million='0.6', source='bench', actor=actor)\n"
        f"free = project_create(name='Bench', api_key='{UPSTREAM_KEY}', actor=actor)\n"
        "print(token_generate(project=free, duration=timedelta(hours=2), actor=actor).plaintext)\n"
        f"limited = project_create(name='Bench limited', api_key='{UPSTREAM_KEY}', actor=actor,\n"
        "                         budget_usd=10**9, budget_period='month')\n"
        "print(token_generate(project=limited, duration=timedelta(hours=2), actor=actor, requests_per_minute=10**9,\n"
        "                     tokens_per_minute=10**9, budget_usd=10**9).plaintext)\n"
        f"ruled = project_create(name='Bench policy', api_key='{UPSTREAM_KEY}', actor=actor, **{POLICY!r})\n"
        "print(token_generate(project=ruled, duration=timedelta(hours=2), actor=actor,\n"
        "                     allowed_models=['gpt-4o-mini'], allowed_ips=['127.0.0.1/32']).plaintext)\n"
        f"cached = project_create(name='Bench cached', api_key='{UPSTREAM_KEY}', actor=actor, cache_mode='opt-in')\n"
        "print(token_generate(project=cached, duration=timedelta(hours=2), actor=actor).plaintext)\n"
    )
    free, limited, ruled, cached = migrate_and_run(env, code)[-4:]
    return free, limited, ruled, cached


def migrate_and_run(env: dict, code: str, checkout: Path = BASE_DIR) -> list[str]:
    """Migrate the database `env` names, then run `code` in `manage.py shell` (of `checkout`); the lines it printed."""
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=checkout, env=env, check=True)
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=checkout,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip().splitlines()


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """Terminate a process this bench started and wait for it; killed if it does not end within `timeout`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {port} within {timeout} s")


def redis_answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def forget_redis_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    for name in client.scan_iter(match=f"{prefix}*"):
        client.delete(name)
    client.close()


# --- the run ----------------------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    direct: Target, proxied: Target, limited: Target, ruled: Target, args, hits: dict[str, Target] | None = None
) -> dict:
    figures: dict = {}
    # warm both paths (connections, imports, caches) before measuring
    await latency(direct, 50, 50)
    await latency(proxied, 50, 50)

    if "latency" in args.parts:
        figures["latency"] = await measure_latency(direct, proxied, args)
    if "throughput" in args.parts:
        direct_rps, direct_failed = await throughput(direct, 32, args.seconds)
        proxied_rps, proxied_failed = await throughput(proxied, 32, args.seconds)
        figures["throughput"] = {
            "direct": direct_rps,
            "proxied": proxied_rps,
            "failed": direct_failed + proxied_failed,
        }
    if "ttfb" in args.parts:
        figures["ttfb"] = {
            "direct": statistics.median(await ttfb(direct, 30)),
            "proxied": statistics.median(await ttfb(proxied, 30)),
        }
    if "streams" in args.parts:
        figures["streams"] = await measure_streams(direct, proxied, args)
    if "limits" in args.parts:
        figures["limits"] = await measure_limits(proxied, limited, args)
    if "policy" in args.parts:
        figures["policy"] = await measure_policy(proxied, ruled, args)
    if "cache" in args.parts:
        figures["cache"] = await measure_cache(direct, proxied, hits or {}, args)
    return figures


async def measure_cache(direct: Target, proxied: Target, hits: dict[str, Target], args) -> dict:
    """p50 at c=1 and throughput at c=32 of cache hits (one request made and stored first), interleaved with the
    uncached proxy and the mock called directly, three throughput runs each (medians)."""
    for target in hits.values():
        await latency(target, 1, 0)  # the miss that stores the answer
        await asyncio.sleep(0.3)
        await latency(target, 50, 50)
    names = {"direct": direct, "uncached": proxied, **hits}
    p50 = {name: statistics.median(await latency(target, args.requests, 100)) for name, target in names.items()}
    runs: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(3):
        for name, target in names.items():
            runs[name].append((await throughput(target, 32, args.seconds))[0])
    return {"p50": p50, "throughput": {name: statistics.median(values) for name, values in runs.items()}}


async def measure_limits(proxied: Target, limited: Target, args) -> dict:
    """Throughput at c=32 of a token with every limit (and a project with a monthly budget) against an unlimited
    one, interleaved, three runs each, with the server's CPU per request: what counting and charging cost."""
    await latency(limited, 50, 50)
    free, counted = [], []
    for _ in range(3):
        free.append(await throughput_and_cpu(proxied, args.server_pid, args.seconds))
        counted.append(await throughput_and_cpu(limited, args.server_pid, args.seconds))
    return {
        "unlimited": statistics.median(r for r, _ in free),
        "limited": statistics.median(r for r, _ in counted),
        "unlimited_cpu": statistics.median(c for _, c in free),
        "limited_cpu": statistics.median(c for _, c in counted),
    }


async def measure_policy(proxied: Target, ruled: Target, args) -> dict:
    """Latency p50 at c=1, throughput at c=32 and the server's CPU per request of a token under a project policy
    (the request sent by an allowed origin from an allowed address, naming an alias) against a token with none,
    interleaved, three runs each: what the policy's checks and the body's rewrite cost."""
    await latency(ruled, 50, 50)
    free, ruled_runs, free_p50, ruled_p50 = [], [], [], []
    for _ in range(3):
        free_p50.append(statistics.median(await latency(proxied, args.requests // 4, 20)))
        ruled_p50.append(statistics.median(await latency(ruled, args.requests // 4, 20)))
        free.append(await throughput_and_cpu(proxied, args.server_pid, args.seconds))
        ruled_runs.append(await throughput_and_cpu(ruled, args.server_pid, args.seconds))
    return {
        "free_p50": statistics.median(free_p50),
        "ruled_p50": statistics.median(ruled_p50),
        "free": statistics.median(r for r, _ in free),
        "ruled": statistics.median(r for r, _ in ruled_runs),
        "free_cpu": statistics.median(c for _, c in free),
        "ruled_cpu": statistics.median(c for _, c in ruled_runs),
    }


async def measure_latency(direct: Target, proxied: Target, args) -> dict:
    d, p = await latency(direct, args.requests, 100), await latency(proxied, args.requests, 100)
    return {
        "direct_p50": statistics.median(d),
        "proxied_p50": statistics.median(p),
        "direct_p99": percentile(d, 0.99),
        "proxied_p99": percentile(p, 0.99),
    }


async def measure_streams(direct: Target, proxied: Target, args) -> dict:
    chunks, delay = 30, 0.1  # 3 seconds per stream
    direct_ok, direct_failed = await streams(direct, args.streams, chunks, delay)
    proxied_ok, proxied_failed = await streams(proxied, args.streams, chunks, delay)
    return {
        "count": args.streams,
        "direct_failed": direct_failed,
        "proxied_failed": proxied_failed,
        "direct_mean": statistics.mean(t.total for t in direct_ok) if direct_ok else float("nan"),
        "proxied_mean": statistics.mean(t.total for t in proxied_ok) if proxied_ok else float("nan"),
        "direct_max": max((t.total for t in direct_ok), default=float("nan")),
        "proxied_max": max((t.total for t in proxied_ok), default=float("nan")),
    }


def report(figures: dict, engine: str, workers: int, rss_kib: int) -> None:
    def verdict(ok: bool) -> str:
        return "meets target" if ok else "MISSES target"

    print(f"\nLLM Proxy benchmark — {engine}, {workers} uvicorn workers, {os.cpu_count()} CPUs")
    if lat := figures.get("latency"):
        added_p50 = lat["proxied_p50"] - lat["direct_p50"]
        added_p99 = lat["proxied_p99"] - lat["direct_p99"]
        print(f"  latency c=1   direct p50 {lat['direct_p50']:.2f} ms  p99 {lat['direct_p99']:.2f} ms")
        print(f"                proxied p50 {lat['proxied_p50']:.2f} ms  p99 {lat['proxied_p99']:.2f} ms")
        print(
            f"                added p50 {added_p50:.2f} ms ({lat['proxied_p50'] / lat['direct_p50']:.2f}x), "
            f"added p99 {added_p99:.2f} ms ({lat['proxied_p99'] / lat['direct_p99']:.2f}x)   "
            f"[target: added p50 <= {TARGETS['added_p50_ms']} ms: {verdict(added_p50 <= TARGETS['added_p50_ms'])}]"
        )
    if thr := figures.get("throughput"):
        ratio = thr["proxied"] / thr["direct"]
        print(
            f"  throughput c=32  direct {thr['direct']:.0f} req/s, proxied {thr['proxied']:.0f} req/s "
            f"= {ratio:.1%} of direct, {thr['failed']} failed   "
            f"[target >= {TARGETS['throughput_ratio']:.0%}: {verdict(ratio >= TARGETS['throughput_ratio'])}]"
        )
    if tt := figures.get("ttfb"):
        print(
            f"  stream TTFB  direct {tt['direct']:.2f} ms, proxied {tt['proxied']:.2f} ms "
            f"({tt['proxied'] / tt['direct']:.2f}x, +{tt['proxied'] - tt['direct']:.2f} ms)"
        )
    if st := figures.get("streams"):
        stream_ratio = st["proxied_mean"] / st["direct_mean"]
        print(
            f"  {st['count']} concurrent 3 s streams  failures direct {st['direct_failed']}, proxied "
            f"{st['proxied_failed']}; mean {st['direct_mean']:.3f} s direct, {st['proxied_mean']:.3f} s proxied "
            f"({stream_ratio:.3f}x); max {st['direct_max']:.3f} s / {st['proxied_max']:.3f} s   "
            f"[target 0 failures, <= {TARGETS['stream_ratio']}x: "
            f"{verdict(st['proxied_failed'] == 0 and stream_ratio <= TARGETS['stream_ratio'])}]"
        )
    if lim := figures.get("limits"):
        ratio = lim["limited"] / lim["unlimited"]
        print(
            f"  limits c=32  unlimited token {lim['unlimited']:.0f} req/s, token and project with every limit "
            f"{lim['limited']:.0f} req/s = {ratio:.1%}; server CPU per request {lim['unlimited_cpu']:.2f} → "
            f"{lim['limited_cpu']:.2f} ms   "
            f"[target >= {TARGETS['limits_ratio']:.0%}: {verdict(ratio >= TARGETS['limits_ratio'])}]"
        )
    if pol := figures.get("policy"):
        ratio = pol["ruled"] / pol["free"]
        print(
            f"  policy  p50 c=1 {pol['free_p50']:.2f} ms without, {pol['ruled_p50']:.2f} ms with "
            f"(+{pol['ruled_p50'] - pol['free_p50']:.2f} ms); c=32 {pol['free']:.0f} req/s without, "
            f"{pol['ruled']:.0f} req/s with = {ratio:.1%}; server CPU per request {pol['free_cpu']:.2f} → "
            f"{pol['ruled_cpu']:.2f} ms   "
            f"[target >= {TARGETS['policy_ratio']:.0%}: {verdict(ratio >= TARGETS['policy_ratio'])}]"
        )
    if cache := figures.get("cache"):
        p50, rps = cache["p50"], cache["throughput"]
        print(
            f"  cache c=1 p50  direct {p50['direct']:.2f} ms, uncached proxy {p50['uncached']:.2f} ms"
            + "".join(f", hit ({name}) {p50[name]:.2f} ms" for name in p50 if name.startswith("hit"))
        )
        print(
            f"  cache c=32     direct {rps['direct']:.0f} req/s, uncached proxy {rps['uncached']:.0f} req/s"
            + "".join(f", hit ({name}) {rps[name]:.0f} req/s" for name in rps if name.startswith("hit"))
        )
        for name in (name for name in p50 if name.startswith("hit")):
            speedup = p50["uncached"] / p50[name]
            ratio = rps[name] / rps["uncached"]
            ok = speedup >= TARGETS["hit_speedup"] and ratio >= TARGETS["hit_throughput_ratio"]
            print(
                f"    {name}: {speedup:.2f}x faster than uncached at c=1, {ratio:.2f}x its throughput at c=32   "
                f"[target >= {TARGETS['hit_speedup']}x and >= {TARGETS['hit_throughput_ratio']}x: {verdict(ok)}]"
            )
    print(f"  server peak RSS  {rss_kib / 1024:.0f} MiB (gunicorn master + {workers} workers)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=2000, help="requests per latency series")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument(
        "--parts",
        type=lambda value: set(value.split(",")) - {""},
        default=set(PARTS),
        help=f"comma-separated parts to measure (default all: {','.join(PARTS)})",
    )
    parser.add_argument(
        "--server-log",
        metavar="PATH",
        help="write the server's output (its access log: a line per request) to this file instead of the console",
    )
    args = parser.parse_args()
    if unknown := args.parts - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")

    from cryptography.fernet import Fernet

    bench_id = str(os.getpid())
    db_url, drop_database = database(bench_id)
    mock_port, server_port = free_port(), free_port()
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "bench-" + os.urandom(24).hex(),
        "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "DATABASE_URL": db_url,
        "UPSTREAM_BASE_URL": f"http://127.0.0.1:{mock_port}/v1",
        "BIND": f"127.0.0.1:{server_port}",
        "WEB_CONCURRENCY": str(args.workers),
        "LOG_LEVEL": "WARNING",
        "ACCESS_LOG": "",
    }
    processes: list[subprocess.Popen] = []
    sampler = None
    server_log = None
    redis_prefix = f"llmproxy-bench-{bench_id}:"
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        token, limited_token, ruled_token, cached_token = seed(env)
        mock = subprocess.Popen(
            [sys.executable, "tests/mock_upstream.py", "--port", str(mock_port)],
            cwd=BASE_DIR,
            stdout=subprocess.DEVNULL,
        )
        processes.append(mock)
        if args.server_log:
            server_log = open(args.server_log, "w")  # noqa: SIM115 (closed below)
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "llmproxy.asgi:application"],
            cwd=BASE_DIR,
            env=env,
            stdout=server_log,
            stderr=server_log,
        )
        processes.append(server)
        redis_port = None
        if "cache" in args.parts and redis_answers(redis_url):
            # A second server, the same but for CACHE_URL: hits kept in Redis.
            redis_port = free_port()
            redis_env = {
                **env,
                "BIND": f"127.0.0.1:{redis_port}",
                "CACHE_URL": redis_url,
                "CACHE_KEY_PREFIX": redis_prefix,
            }
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "llmproxy.asgi:application"],
                    cwd=BASE_DIR,
                    env=redis_env,
                    stdout=server_log,
                    stderr=server_log,
                )
            )
            wait_for_port(redis_port, processes[-1], "the Redis-backed server")
        elif "cache" in args.parts:
            print(f"no Redis answers at {redis_url}: cache hits measured on the database only", flush=True)
        wait_for_port(mock_port, mock, "the mock upstream")
        wait_for_port(server_port, server, "the server")
        time.sleep(1.5)  # let every worker finish booting
        print(f"server pid {server.pid}, workers {' '.join(map(str, child_pids(server.pid)))}", flush=True)
        args.server_pid = server.pid
        sampler = RssSampler(server.pid)
        sampler.start()

        direct = Target("direct", "127.0.0.1", mock_port, "/v1", f"Bearer {UPSTREAM_KEY}")
        proxied = Target("proxied", "127.0.0.1", server_port, "/v1", f"Bearer {token}")
        limited = Target("limited", "127.0.0.1", server_port, "/v1", f"Bearer {limited_token}")
        ruled = Target(
            "ruled",
            "127.0.0.1",
            server_port,
            "/v1",
            f"Bearer {ruled_token}",
            ALIASED_CHAT,
            POLICY["allowed_origins"][0],
        )
        cache_opt_in = tuple(CACHE_HEADERS.items())
        hits = {
            "hit-db": Target("hit-db", "127.0.0.1", server_port, "/v1", f"Bearer {cached_token}", always=cache_opt_in)
        }
        if redis_port is not None:
            hits["hit-redis"] = Target(
                "hit-redis", "127.0.0.1", redis_port, "/v1", f"Bearer {cached_token}", always=cache_opt_in
            )
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        figures = runner(measure(direct, proxied, limited, ruled, args, hits))
        sampler.running = False
        engine = "PostgreSQL" if db_url.startswith("postgres") else "SQLite"
        report(figures, engine, args.workers, sampler.peak_kib)
    finally:
        if sampler is not None:
            sampler.running = False
        for process in reversed(processes):
            stop_process(process)
        drop_database()
        if "cache" in args.parts and redis_answers(redis_url):
            forget_redis_keys(redis_url, redis_prefix)
        if server_log is not None:
            server_log.close()


if __name__ == "__main__":
    main()

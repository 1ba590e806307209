"""This checkout against another revision of it, on the same machine at the same time: `python bench/side_by_side.py
REV` (or `make bench-side-by-side BASE=REV`).

On a machine whose speed moves from one hour to the next (a shared VM), two runs of the shared harness minutes apart
differ by more than a change under test does. Here both servers run at once, each as `make bench-compare` runs it
(gunicorn, 2 uvicorn workers, access log and metrics on, a fresh database of its own: SQLite, or DATABASE_URL's
PostgreSQL), behind the shared harness's mock (`../shared/bench`, SHARED_BENCH names another), and its load
generator runs blocks against each in turn, the order swapped every block, with the mock directly as the reference:

- chat at c=1: p50 latency and the server's CPU per request;
- streams at c=1 (20 chunks 50 ms apart, the harness's TTFT scenario): p50 time to first token and CPU per stream.

CPU is read per thread from /proc (`schedstat`, in nanoseconds) for the gunicorn master and its workers, so it is
not rounded to clock ticks. REV is checked out into a temporary git worktree and runs with this checkout's virtual
environment. BLOCKS (6), REQUESTS (400 a block) and STREAMS (6 a block) set the run's size.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR / "bench"))
sys.path.insert(0, str(BASE_DIR))

from compare import MOCK_KEY, SERVER, harness_folder, seed, server_env  # noqa: E402
from proxy_bench import cpu_ns, database, stop_process, wait_for_port  # noqa: E402

from tests.live import child_pids, free_port  # noqa: E402


def tree_cpu_ns(pid: int) -> int:
    """CPU time so far of a process (the gunicorn master) and its children, in nanoseconds."""
    return cpu_ns((pid, *child_pids(pid)))


class Side:
    """One server: a checkout's code on a database of its own."""

    def __init__(self, name: str, checkout: Path, mock_port: int, logs: Path) -> None:
        self.name, self.checkout = name, checkout
        self.port = free_port()
        self.db_url, self.drop_database = database(f"side_{name}_{os.getpid()}")
        env = server_env(self.db_url, mock_port, self.port)
        self.token = seed(env, checkout)
        self.log = (logs / f"{name}.log").open("w")
        self.process = subprocess.Popen(SERVER, cwd=checkout, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.process, f"the {name} server")
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process, 30)
        self.log.close()
        self.drop_database()


def load(harness: Path, url: str, token: str, mode: str, requests: int) -> dict:
    """The harness's load generator at c=1: its JSON line."""
    command = ["node", str(harness / "load.js"), "--url", url, "--token", token, "--mode", mode]
    command += ["--concurrency", "1", "--requests", str(requests), "--duration", "300"]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def configure_mock(mock_port: int, delay_ms: int) -> None:
    body = json.dumps({"chunks": 20, "delay_ms": delay_ms, "ttfb_ms": 0, "status": 0}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{mock_port}/__config", data=body, headers={"content-type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=5).read()


def block(harness: Path, mock_port: int, side: Side | None, args) -> dict:
    """One block against one server (or the mock itself): its figures."""
    url, token = (side.url, side.token) if side else (f"http://127.0.0.1:{mock_port}", MOCK_KEY)
    figures = {}
    for mode, delay, count, name, latency in (
        ("chat", 0, args.requests, "chat p50 ms", "latency_ms"),
        ("stream", 50, args.streams, "stream TTFT ms", "ttft_ms"),
    ):
        configure_mock(mock_port, delay)
        before = tree_cpu_ns(side.process.pid) if side else 0
        result = load(harness, url, token, mode, count)
        if result["requests_ok"] != count:
            raise SystemExit(f"{side.name if side else 'direct'}: {mode} answered {result['requests_ok']} of {count}")
        figures[name] = result[latency]["p50"]
        if side:
            figures[f"{mode} CPU ms"] = (tree_cpu_ns(side.process.pid) - before) / 1e6 / count
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the revision to compare this checkout with (a commit, tag or branch)")
    parser.add_argument("--blocks", type=int, default=int(os.environ.get("BLOCKS", 6)))
    parser.add_argument("--requests", type=int, default=int(os.environ.get("REQUESTS", 400)))
    parser.add_argument("--streams", type=int, default=int(os.environ.get("STREAMS", 6)))
    args = parser.parse_args()
    harness = harness_folder()
    if not (harness / "mock_upstream.js").is_file() or shutil.which("node") is None:
        print(f"needs node and the shared benchmark at {harness} (set SHARED_BENCH)", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="side-by-side-"))  # the base's worktree and both servers' logs
    worktree = folder / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.base], cwd=BASE_DIR, check=True)
    (worktree / "data").mkdir(exist_ok=True)
    mock_port = free_port()
    mock = subprocess.Popen(["node", str(harness / "mock_upstream.js"), str(mock_port)], stdout=subprocess.DEVNULL)
    sides: list[Side] = []
    try:
        wait_for_port(mock_port, mock, "the mock")
        sides = [Side("base", worktree, mock_port, folder), Side("this", BASE_DIR, mock_port, folder)]
        runs: dict[str, list[dict]] = {"direct": [], "base": [], "this": []}
        for number in range(args.blocks):
            order = sides if number % 2 == 0 else sides[::-1]
            runs["direct"].append(block(harness, mock_port, None, args))
            for side in order:
                runs[side.name].append(block(harness, mock_port, side, args))
            print(f"block {number + 1} of {args.blocks} done", file=sys.stderr)
        report(runs, args)
    finally:
        for side in sides:
            side.stop()
        stop_process(mock)
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=BASE_DIR, check=False)
        print(f"servers' logs in {folder}", file=sys.stderr)
    return 0


def report(runs: dict[str, list[dict]], args) -> None:
    print(f"{args.blocks} blocks of {args.requests} requests and {args.streams} streams at c=1, medians over blocks")
    print(f"{'figure':<22}{'direct':>10}{'base':>10}{'this':>10}{'this-base':>11}   this-base by block")
    for figure in ("chat p50 ms", "chat CPU ms", "stream TTFT ms", "stream CPU ms"):
        medians = {
            name: statistics.median(b[figure] for b in blocks) if figure in blocks[0] else None
            for name, blocks in runs.items()
        }
        by_block = [this[figure] - base[figure] for this, base in zip(runs["this"], runs["base"], strict=True)]
        cells = "".join(f"{value:>10.3f}" if value is not None else f"{'-':>10}" for value in medians.values())
        blocks = " ".join(f"{difference:+.3f}" for difference in by_block)
        print(f"{figure:<22}{cells}{medians['this'] - medians['base']:>+11.3f}   {blocks}")


if __name__ == "__main__":
    sys.exit(main())

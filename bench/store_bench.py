"""Benchmark: the S3 engine store against plain boto3, on moto's server over HTTP.

Run: python bench/store_bench.py [--rank-mib 512] [--ranks 4] [--runs 3]. Makes a
multi-file engine directory (rank files plus small configs, 2 GiB by default), then times,
in the same run: plain ``upload_file``/``download_file`` of every file (one after another,
boto3's default transfer config) and ``S3Store.upload``/``S3Store.download`` (parallel,
sha256 of every file, manifest last). Each side gets a fresh moto server in its own process
(no shared GIL; its memory is freed when it exits); runs alternate which side goes first.
The ratio is plain seconds / store seconds per run; the median over runs is reported (goal:
at least 0.9), with the lowest. CPU seconds of this process and of moto's are recorded too.
Prints the figures and writes ``bench/out/store_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from kiln.store import open_store
from kiln.store.s3 import S3Store

MIB = 1024 * 1024
KEY = "b" * 64
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_REGION": "us-east-1"}


@dataclass
class Moto:
    endpoint: str
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server process has used."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def moto_server() -> Iterator[Moto]:
    """moto's S3 server in a child process on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ | CREDENTIALS
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)
        yield Moto(f"http://127.0.0.1:{port}", proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def make_engine(root: Path, ranks: int, rank_mib: int) -> int:
    """Rank files of random bytes plus small configs; returns the total size."""
    root.mkdir(parents=True)
    block = os.urandom(16 * MIB)
    for rank in range(ranks):
        with (root / f"rank{rank}.engine").open("wb") as out:
            for i in range(rank_mib // 16):  # vary each block so no two parts are equal
                out.write(rank.to_bytes(4, "little") + i.to_bytes(4, "little") + block[8:])
    (root / "config.json").write_text(json.dumps({"tp": ranks, "pp": 1}))
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_bytes(os.urandom(2 * MIB))
    (root / "tokenizer" / "tokenizer_config.json").write_text("{}")
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def timed(fn: Callable[[], Any], moto: Moto) -> dict[str, float]:
    """Wall seconds, and CPU seconds of this process and of moto's, for one call."""
    cpu, server = time.process_time(), moto.cpu_seconds()
    started = time.perf_counter()
    fn()
    return {"s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
            "moto_cpu_s": moto.cpu_seconds() - server}


def one_side(side: str, src: Path, work: Path) -> dict[str, float]:
    """Upload then download ``src`` with one side, against a fresh moto server."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    with moto_server() as moto:
        client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
        client.create_bucket(Bucket="bench")
        store = open_store("s3://bench/kiln/", credentials=CREDENTIALS,
                           endpoint_url=moto.endpoint)
        assert isinstance(store, S3Store)

        def plain_up() -> None:
            for path in files:
                client.upload_file(str(path), "bench", f"plain/{path.relative_to(src)}")

        def plain_down() -> None:
            for path in files:
                target = work / "out" / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file("bench", f"plain/{path.relative_to(src)}", str(target))

        up, down = ((plain_up, plain_down) if side == "plain" else
                    (lambda: store.upload(KEY, src), lambda: store.download(KEY, work / "out")))
        result = {f"upload_{k}": v for k, v in timed(up, moto).items()}
        result |= {f"download_{k}": v for k, v in timed(down, moto).items()}
        store.close()
    shutil.rmtree(work / "out")
    return result


def one_run(src: Path, work: Path, *, store_first: bool) -> dict[str, float]:
    """Each side once; ``store_first`` alternates which side goes first."""
    result: dict[str, float] = {}
    for side in ("store", "plain") if store_first else ("plain", "store"):
        result |= {f"{side}_{k}": v for k, v in one_side(side, src, work).items()}
    return result


def main() -> None:
    """Run the benchmark and report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--rank-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-store-bench-") as tmp:
        work = Path(tmp)
        total = make_engine(work / "engine", args.ranks, args.rank_mib)
        runs = []
        for number in range(args.runs):
            runs.append(one_run(work / "engine", work, store_first=number % 2 == 1))
            print(f"run {number + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                    runs[-1].items() if k.endswith("_s")
                                                    and "cpu" not in k), flush=True)
    median = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
    gib = total / (1024 * MIB)
    result = {
        "bytes": total, "files": args.ranks + 3, "runs": runs, "median": median,
        **{f"{op}_ratio{suffix}": pick(r[f"plain_{op}_s"] / r[f"store_{op}_s"] for r in runs)
           for op in ("upload", "download")
           for suffix, pick in (("", statistics.median), ("_min", min))},
        "goal_ratio": 0.9, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
    }
    for op in ("upload", "download"):
        plain, ours = median[f"plain_{op}_s"], median[f"store_{op}_s"]
        print(f"{op:8s} {gib:.2f} GiB: plain boto3 {plain:6.2f}s ({gib / plain * 1024:6.0f} "
              f"MiB/s), kiln store {ours:6.2f}s ({gib / ours * 1024:6.0f} MiB/s), "
              f"ratio {result[f'{op}_ratio']:.2f} (lowest {result[f'{op}_ratio_min']:.2f}; goal "
              f">= 0.9); CPU s client/moto: plain "
              f"{median[f'plain_{op}_cpu_s']:.1f}/{median[f'plain_{op}_moto_cpu_s']:.1f}, "
              f"store {median[f'store_{op}_cpu_s']:.1f}/{median[f'store_{op}_moto_cpu_s']:.1f}")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "store_bench.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

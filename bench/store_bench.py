"""Benchmark: the S3 engine store against plain boto3, on moto's server over HTTP.

Run: python bench/store_bench.py [--rank-mib 512] [--ranks 4] [--pairs 4]
[--download-pairs 3]. Makes a multi-file engine directory (rank files plus small configs,
2 GiB by default) and times, against one moto server in its own process (no shared GIL):
plain ``upload_file``/``download_file`` of every file (one after another, boto3's default
transfer config) and ``S3Store.upload``/``S3Store.download`` (parallel, sha256 of every file,
manifest last). Timings come in pairs, one of each side back to back, alternating which goes
first, so that a busy machine slows both alike; uploaded objects are deleted after each
upload. The ratio is plain seconds / store seconds per pair; the median over pairs is
reported (goal: at least 0.9), with the lowest. CPU seconds of this process and of moto's are
recorded too. Prints the figures and writes ``bench/out/store_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
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


class Sides:
    """The two ways of moving the same files: plain boto3, and the engine store."""

    def __init__(self, moto: Moto, src: Path, work: Path) -> None:
        self.src, self.work = src, work
        self.files = sorted(p for p in src.rglob("*") if p.is_file())
        self.client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                                   aws_access_key_id="bench", aws_secret_access_key="bench")
        self.client.create_bucket(Bucket="bench")
        store = open_store("s3://bench/kiln/", credentials=CREDENTIALS,
                           endpoint_url=moto.endpoint)
        assert isinstance(store, S3Store)
        self.store = store

    def upload(self, side: str) -> None:
        if side == "store":
            self.store.upload(KEY, self.src)
            return
        for path in self.files:
            self.client.upload_file(str(path), "bench", f"plain/{path.relative_to(self.src)}")

    def remove(self, side: str) -> None:
        if side == "store":
            self.store.delete(KEY)
            return
        self.client.delete_objects(Bucket="bench", Delete={"Objects": [
            {"Key": f"plain/{p.relative_to(self.src)}"} for p in self.files]})

    def download(self, side: str) -> None:
        out = self.work / "out"
        if side == "store":
            self.store.download(KEY, out)
            return
        for path in self.files:
            target = out / path.relative_to(self.src)
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file("bench", f"plain/{path.relative_to(self.src)}",
                                      str(target))


def pairs(moto: Moto, op: Callable[[str], None], after: Callable[[str], None], count: int,
          label: str) -> list[dict[str, float]]:
    """``count`` pairs of (plain, store) timings of ``op``, alternating which goes first."""
    result = []
    for number in range(count):
        pair: dict[str, float] = {}
        for side in ("store", "plain") if number % 2 else ("plain", "store"):
            pair |= {f"{side}_{k}": v for k, v in timed(partial(op, side), moto).items()}
            after(side)
        pair["ratio"] = pair["plain_s"] / pair["store_s"]
        print(f"{label} pair {number + 1}: plain {pair['plain_s']:.2f}s, store "
              f"{pair['store_s']:.2f}s, ratio {pair['ratio']:.2f}", flush=True)
        result.append(pair)
    return result


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.median(r[name] for r in runs) for name in runs[0]} | {
        "ratio_min": min(r["ratio"] for r in runs)}


def main() -> None:
    """Run the benchmark and report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--rank-mib", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=4, help="upload pairs")
    parser.add_argument("--download-pairs", type=int, default=3)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up on kill
    with tempfile.TemporaryDirectory(prefix="kiln-store-bench-") as tmp, \
            moto_server() as moto:
        work = Path(tmp)
        total = make_engine(work / "engine", args.ranks, args.rank_mib)
        sides = Sides(moto, work / "engine", work)
        uploads = pairs(moto, sides.upload, sides.remove, args.pairs, "upload")
        for side in ("plain", "store"):
            sides.upload(side)
        downloads = pairs(moto, sides.download,
                          lambda _side: shutil.rmtree(work / "out"), args.download_pairs,
                          "download")
        sides.store.close()
    gib = total / (1024 * MIB)
    result: dict[str, Any] = {
        "bytes": total, "files": args.ranks + 3, "goal_ratio": 0.9, "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "upload": {"pairs": uploads, "median": summary(uploads)},
        "download": {"pairs": downloads, "median": summary(downloads)},
    }
    for op in ("upload", "download"):
        m = result[op]["median"]
        print(f"{op:8s} {gib:.2f} GiB: plain boto3 {m['plain_s']:6.2f}s "
              f"({gib / m['plain_s'] * 1024:4.0f} MiB/s), kiln store {m['store_s']:6.2f}s "
              f"({gib / m['store_s'] * 1024:4.0f} MiB/s); ratio {m['ratio']:.2f} (median of "
              f"pairs, lowest {m['ratio_min']:.2f}; goal >= 0.9); CPU s client/moto: plain "
              f"{m['plain_cpu_s']:.1f}/{m['plain_moto_cpu_s']:.1f}, store "
              f"{m['store_cpu_s']:.1f}/{m['store_moto_cpu_s']:.1f}")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "store_bench.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

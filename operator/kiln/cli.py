"""The ``kiln`` command: one entry point, subcommands imported only when used."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def _crds(args: argparse.Namespace) -> int:
    from kiln.gen import crds

    for out in (args.out, args.chart):
        if out:
            for path in crds.write_crds(Path(out)):
                print(path)
    return 0


def _docs(args: argparse.Namespace) -> int:
    from kiln.gen import apidocs

    print(apidocs.write_docs(Path(args.out)))
    return 0


def _compatibility(args: argparse.Namespace) -> int:
    from kiln.gen import compatdocs

    print(compatdocs.write(Path(args.out)))
    return 0


def _run(args: argparse.Namespace) -> int:
    from kiln import operator

    return operator.run(namespaces=args.namespace or [], liveness=args.liveness,
                        verbose=args.verbose, leader_elect=args.leader_elect)


def _gc(args: argparse.Namespace) -> int:
    from kiln.config import OperatorConfig, per_namespace
    from kiln.errors import InvalidInput
    from kiln.gc import collect
    from kiln.kube.client import Client, Kube, load_config
    from kiln.store import open_store

    kube = Kube(Client(load_config()))
    stores = list(args.store or [])
    default = OperatorConfig.from_env().default_store
    for eb in kube.list_custom("enginebuilds"):
        uri = ((eb.get("spec") or {}).get("output") or {}).get("store") or per_namespace(
            default, eb["metadata"]["namespace"])
        if uri and uri not in stores:
            stores.append(uri)
    if not stores:
        print("no store: name one with --store, or set KILN_DEFAULT_STORE", file=sys.stderr)
        return 2
    try:
        retention = collect.check_retention(collect.seconds(args.retention))
    except InvalidInput as error:
        print(f"kiln gc: {error.message}", file=sys.stderr)
        return 2
    keep = collect.referenced(kube)
    for uri in stores:
        with open_store(uri) as store:
            collect.collect(store, keep, retention=retention, apply=args.apply,
                       uploads_after=collect.seconds(args.uploads_after),
                       recheck=lambda: collect.referenced(kube))
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from kiln.dev import quickstart

    state = Path(args.state_dir) if args.state_dir else None
    try:
        return quickstart.run(wait_only=args.exit_when_ready, timeout=args.timeout,
                              state_dir=state)
    except KeyboardInterrupt:
        return 130


def _testbed_build(args: argparse.Namespace) -> int:
    from kiln.dev.testbed import binaries

    print(binaries.ensure_built(verbose=True))
    if args.kueue:
        print(binaries.ensure_kueue(verbose=True))
    return 0


def _cluster_up(args: argparse.Namespace) -> int:
    from kiln.dev.testbed import cluster

    return cluster.serve_forever(Path(args.state_dir) if args.state_dir else None)


def _cluster_down(args: argparse.Namespace) -> int:
    from kiln.dev.testbed import cluster

    return cluster.stop_running(Path(args.state_dir) if args.state_dir else None)


def _gate(args: argparse.Namespace) -> int:
    from kiln.gate import main as gate

    return gate.run(canary=args.canary, stable=args.stable, tokenizer=args.tokenizer,
                    requests=args.requests, concurrency=args.concurrency,
                    input_tokens=args.input_tokens, output_tokens=args.output_tokens)


def _fetch_engine(args: argparse.Namespace) -> int:
    from kiln.fetcher import main as fetcher

    return fetcher.run(store=args.store, key=args.key, upload=args.upload, source=args.source,
                     revision=args.revision, dest=Path(args.dest),
                     model_repo=Path(args.model_repo) if args.model_repo else None,
                     guard_dir=Path(args.guard_dir) if args.guard_dir else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    crds = sub.add_parser("crds", help="write the CRDs generated from kiln.api")
    crds.add_argument("--out", default="crds", help="directory to write into (default: crds)")
    crds.add_argument("--chart", default="charts/kiln/crds",
                      help="also write the Helm chart's copy here (default: charts/kiln/crds; "
                      "'' to skip)")
    crds.set_defaults(func=_crds)

    docs = sub.add_parser("docs", help="write the API reference generated from kiln.api")
    docs.add_argument("--out", default="docs/api.md",
                      help="file to write (default: docs/api.md)")
    docs.set_defaults(func=_docs)

    compat = sub.add_parser("compatibility", help="write the GPU compatibility table "
                            "generated from the catalogue")
    compat.add_argument("--out", default="docs/compatibility.md",
                        help="file to write (default: docs/compatibility.md)")
    compat.set_defaults(func=_compatibility)

    run = sub.add_parser("run", help="run the operator against the current kubeconfig "
                         "(or in-cluster credentials)")
    run.add_argument("-n", "--namespace", action="append",
                     help="watch only this namespace (repeatable); default: all")
    run.add_argument("--liveness", default=None,
                     help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("-v", "--verbose", action="store_true", help="log more")
    run.add_argument("--leader-elect", action="store_true",
                     help="reconcile only while holding the Lease, so replicas stand by "
                     "(also KILN_LEADER_ELECTION=true; KILN_LEASE_NAMESPACE, KILN_LEASE_NAME)")
    run.set_defaults(func=_run)

    gc_cmd = sub.add_parser("gc", help="delete engines no EngineBuild of this cluster references "
                        "and no cluster sharing the store used within the retention (dry run "
                        "unless --apply)")
    gc_cmd.add_argument("--apply", action="store_true", help="delete (default: only list)")
    gc_cmd.add_argument("--retention", default="7d", help="keep what was used this recently "
                    "(default 7d)")
    gc_cmd.add_argument("--store", action="append", help="a store to collect (repeatable; "
                    "default: KILN_DEFAULT_STORE and every EngineBuild's spec.output.store)")
    gc_cmd.add_argument("--uploads-after", default="1d", help="with --apply, also remove uploads "
                    "no manifest committed once this old (default 1d)")
    gc_cmd.set_defaults(func=_gc)

    env = os.environ
    from kiln.contract import env as names

    fetch = sub.add_parser(
        "fetch-engine", help="download an engine (every sha256 checked, after checking the "
        "GPU's compute capability), or the checkpoint for the PyTorch fallback")
    for flag, name, default, text in (
        ("--store", names.FETCH_STORE, None,
         "the engine store, s3://bucket/prefix/ or pvc://claim/path"),
        ("--key", names.FETCH_KEY, None, "the engine key"),
        ("--upload", names.FETCH_UPLOAD, None, "the upload of the key to accept (the one the "
         "operator verified); a manifest naming another is refused"),
        ("--source", names.FETCH_SOURCE, None, "instead of an engine: the checkpoint's URI"),
        ("--revision", names.FETCH_REVISION, None, "a pvc:// source's revision"),
        ("--dest", names.FETCH_DEST, "/engine", "directory to fill"),
        ("--model-repo", names.FETCH_MODEL_REPO, None, "also write the Triton model "
         f"repository from ${names.MODEL_REPO_FILES} here"),
        ("--guard-dir", names.FETCH_GUARD_DIR, None, "also put the version guard the server "
         "container runs first here"),
    ):
        fetch.add_argument(flag, default=env.get(name) or default,
                           help=f"{text} (${name}" + (f", default {default})" if default
                                                     else ")"))
    fetch.set_defaults(func=_fetch_engine)

    gate_cmd = sub.add_parser(
        "gate", help="the rollout gate Job: golden prompts and AIPerf against a canary and "
        "the key serving now; the figures go to the termination log")
    gate_cmd.add_argument("--canary", required=True, help="the canary's URL (http://ip:port)")
    gate_cmd.add_argument("--stable", required=True, help="the current key's URL")
    gate_cmd.add_argument("--tokenizer", required=True, help="AIPerf's --tokenizer")
    for option, count in (("--requests", 64), ("--concurrency", 4), ("--input-tokens", 128),
                          ("--output-tokens", 64)):
        gate_cmd.add_argument(option, type=int, default=count, help=f"default {count}")
    gate_cmd.set_defaults(func=_gate)

    quick = sub.add_parser("quickstart", help="kiln's whole job on a local cluster with fake "
                           "GPU pools, shown live (needs a source checkout)")
    quick.add_argument("--exit-when-ready", action="store_true",
                       help="stop everything once every object is Ready (for scripts, CI)")
    quick.add_argument("--timeout", type=float, default=600,
                       help="give up after this many seconds (default 600)")
    quick.add_argument("--state-dir", help="where the cluster keeps its files (default: a "
                       "temp dir, removed at the end)")
    quick.set_defaults(func=_quickstart)

    dev = sub.add_parser("dev", help="the local test bed: a real control plane with fake GPU nodes")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    testbed = dev_sub.add_parser("testbed", help="the test bed's binaries")
    testbed_sub = testbed.add_subparsers(dest="testbed_command", required=True)
    build = testbed_sub.add_parser("build", help="build (or find cached) test-bed binaries")
    build.add_argument("--kueue", action="store_true",
                       help="also Kueue's manager and CRDs (the Kueue field tests'; a cache "
                            "of their own)")
    build.set_defaults(func=_testbed_build)
    cluster = dev_sub.add_parser("cluster", help="start or stop the local cluster")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    for name, func, text in (
        ("up", _cluster_up, "start the cluster and keep it running until Ctrl-C"),
        ("down", _cluster_down, "stop a cluster started by 'up' in another terminal"),
    ):
        cmd = cluster_sub.add_parser(name, help=text)
        cmd.add_argument("--state-dir", help="where the cluster keeps its files")
        cmd.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())

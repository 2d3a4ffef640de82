"""Plan an EngineDeployment from what exists: the pool's GPUs, the EngineBuild's engines and
the Deployments kiln owns.

Pure. ``decide`` says what each GPU product serves (an engine, or a fallback), which
Deployments go, and which auto targets the EngineBuild needs; ``summarize`` turns that and
the observed Deployments into the status and the Events for what changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import get_args

from kiln import catalogue
from kiln.api import (
    AUTO_GPU,
    Backend,
    EngineBuild,
    EngineBuildSpec,
    EngineBuildStatus,
    EngineDeployment,
    EngineDeploymentStatus,
    EngineStatus,
    ProductStatus,
    ServingMode,
)
from kiln.engine_deployment.deployments import ObservedDeployment, deployment_name
from kiln.engine_deployment.pods import ServingFailure
from kiln.key import short_key
from kiln.labels import GPU_PRODUCT_LABEL
from kiln.status import Event, set_conditions
from kiln.trtllm import TRTLLM_VERSION, flags

READY_STATES = ("Ready", "Cached")


@dataclass(frozen=True)
class Serve:
    """What one GPU product's Deployment serves."""

    product: str
    gpu: str | None
    """The product's catalogue name, when the catalogue knows it."""
    compute_capability: str
    deployment: str
    mode: ServingMode
    backend: Backend
    """What ``trtllm-serve --backend`` runs: the build's backend, or pytorch for the
    checkpoint."""
    engine_key: str | None = None
    """None: the checkpoint itself (fallback ``pytorch``)."""
    engine_uri: str | None = None

    @property
    def label(self) -> str:
        return self.gpu or self.product


@dataclass
class Decision:
    """What the EngineDeployment should have now."""

    serves: list[Serve] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    """Products with nothing to serve yet (fallback ``none``, or no previous engine)."""
    delete: list[str] = field(default_factory=list)
    """Owned Deployments no product wants any more."""
    failed: list[str] = field(default_factory=list)
    """``target: message`` of each failed engine a product needs."""
    stalled: tuple[str, str] | None = None
    """(reason, message): nothing can progress until someone changes something."""
    pending: tuple[str, str] | None = None
    """(reason, message): waiting for something outside (the EngineBuild); Deployments are
    left as they are."""


def served_products(ed: EngineDeployment, pool: Mapping[str, str]) -> dict[str, str]:
    """The GPU products to serve on (product → compute capability).

    ``auto``: every product in the pool. A catalogue name: its products present in the pool,
    or its first product when none is (the Deployment then waits for such nodes). Raises
    KeyError for a name the catalogue does not know.
    """
    if ed.spec.gpu == AUTO_GPU:
        return dict(pool)
    gpu = catalogue.by_name(ed.spec.gpu)
    present = {p: cc for p, cc in pool.items() if catalogue.by_product(p) is gpu}
    return present or {gpu.products[0]: gpu.compute_capability}


def _covered(spec: EngineBuildSpec, product: str) -> bool:
    gpu = catalogue.by_product(product)
    for target in spec.targets:
        if gpu is not None and target.gpu == gpu.name:
            return True
        if target.gpu is None and (target.node_selector or {}).get(GPU_PRODUCT_LABEL) == product:
            return True
    return False


def _rank(product: str) -> tuple[int, str]:
    """The catalogue's first product of a GPU comes first."""
    gpu = catalogue.by_product(product)
    products = gpu.products if gpu else ()
    return (products.index(product) if product in products else len(products), product)


def auto_targets(spec: EngineBuildSpec, products: Mapping[str, str]) -> list[str]:
    """``product@cc`` for each product no spec target covers, one per catalogue GPU."""
    chosen: dict[str, str] = {}  # catalogue name (or the product itself) → product
    for product in sorted(products, key=_rank):
        gpu = catalogue.by_product(product)
        if not _covered(spec, product):
            chosen.setdefault(gpu.name if gpu else product, product)
    return sorted(f"{product}@{products[product]}" for product in chosen.values())


def engine_for(status: EngineBuildStatus | None, product: str) -> EngineStatus | None:
    """The EngineBuild's engine for ``product``: built on it, or for its catalogue GPU."""
    engines = status.engines if status else []
    for entry in engines:
        if entry.gpu_product == product:
            return entry
    gpu = catalogue.by_product(product)
    for entry in engines:
        if gpu is not None and entry.target == gpu.name:
            return entry
    return None


def _backend(value: str | None, default: Backend) -> Backend:
    for backend in get_args(Backend):
        if value == backend:
            result: Backend = backend
            return result
    return default


def _serve_one(ed: EngineDeployment, eb: EngineBuild, product: str, cc: str,
               entry: EngineStatus | None, current: ObservedDeployment | None) -> Serve | None:
    gpu = catalogue.by_product(product)
    name = str(ed.metadata["name"])
    base = Serve(product=product, gpu=gpu.name if gpu else None, compute_capability=cc,
                 deployment=deployment_name(name, product), mode="engine",
                 backend=eb.spec.build.backend)
    if entry is not None and entry.state in READY_STATES and entry.key and entry.uri:
        return _with(base, "engine", base.backend, entry.key, entry.uri)
    if ed.spec.fallback == "pytorch":
        return _with(base, "fallback", "pytorch", None, None)
    if ed.spec.fallback != "previous":
        return None
    if entry is not None and entry.previous_key and entry.previous_uri:
        same = current is not None and current.engine_key == entry.previous_key
        backend = _backend(current.backend if same and current else None, base.backend)
        return _with(base, "fallback", backend, entry.previous_key, entry.previous_uri)
    if current is not None and current.engine_key and current.engine_uri:
        return _with(base, "fallback", _backend(current.backend, base.backend),
                     current.engine_key, current.engine_uri)
    return None


def _with(base: Serve, mode: ServingMode, backend: Backend, key: str | None,
          uri: str | None) -> Serve:
    return Serve(base.product, base.gpu, base.compute_capability, base.deployment, mode,
                 backend, key, uri)


def decide(ed: EngineDeployment, eb: EngineBuild | None, products: Mapping[str, str],
           observed: Iterable[ObservedDeployment]) -> Decision:
    """What each product serves; ``observed`` are the Deployments this object owns."""
    owned = list(observed)
    ref = ed.spec.engine_build_ref.name
    if eb is None:
        return Decision(pending=("EngineBuildNotFound",
                                 f"EngineBuild {ref} does not exist in this namespace"))
    if ed.spec.server.kind == "trtllm-serve":
        try:
            flags.check_command(["trtllm-serve", "/engine", *ed.spec.server.args],
                                flags.TRTLLM_SERVE)
        except ValueError as error:
            return Decision(stalled=(
                "InvalidServerArgs", f"server.args: {error}: trtllm-serve {TRTLLM_VERSION} "
                "would exit at start (flags as recorded in kiln.trtllm.flags)"))
    if ed.spec.server.kind == "triton" and eb.spec.build.backend == "pytorch":
        return Decision(stalled=(
            "ServerMismatch", f"server.kind triton serves TensorRT engines, but EngineBuild "
            f"{ref} uses backend pytorch: use server.kind trtllm-serve"))
    current = {d.product: d for d in owned}
    result = Decision()
    status = eb.status
    for product, cc in products.items():
        entry = engine_for(status, product)
        if entry is not None and entry.state == "Failed":
            result.failed.append(f"{entry.target}: {entry.message or 'build failed'}")
        serve = _serve_one(ed, eb, product, cc, entry, current.get(product))
        if serve is None:
            result.waiting.append(product)
        else:
            result.serves.append(serve)
    wanted = {s.deployment for s in result.serves}
    result.delete = sorted(d.name for d in owned if d.name not in wanted)
    return result


def _refusals(decision: Decision, failures: Iterable[ServingFailure]) -> list[ServingFailure]:
    """The pods' refusals that concern what is served now (same product, same engine)."""
    now = {(s.product, s.engine_key) for s in decision.serves}
    return [f for f in failures if (f.product, f.engine_key) in now]


def _conditions(ed: EngineDeployment, decision: Decision, products: list[ProductStatus],
                rolling: list[str], refused: list[ServingFailure] | None = None,
                ) -> tuple[bool, bool, bool, str, str]:
    """(ready, reconciling, stalled, reason, message)."""
    if decision.stalled:
        return False, False, True, *decision.stalled
    if decision.pending:
        return False, True, False, *decision.pending
    if not products:
        where = (f"nodes labelled {ed.spec.pool.node_selector}" if ed.spec.pool.node_selector
                 else "the cluster")
        return False, True, False, "NoGPUs", f"no GPU nodes in {where}"
    served = ", ".join(f"{p.gpu or p.gpu_product}: {_what(p)}" for p in products)
    if decision.failed:
        return False, False, True, "BuildFailed", "; ".join(decision.failed) + \
            f" (serving {served})"
    if refused:
        return False, False, True, refused[0].reason, "; ".join(
            f"{f.product}: pod {f.pod} ({f.container}): {f.message}" for f in refused)
    if any(p.mode != "engine" for p in products):
        return False, True, False, "WaitingForEngine", f"engines are building ({served})"
    if rolling:
        return False, True, False, "RollingOut", f"rolling out {', '.join(rolling)} ({served})"
    return True, False, False, "Serving", f"serving {served}"


def _what(p: ProductStatus) -> str:
    if p.deployment is None:
        return "nothing yet"
    if p.engine_key is None:
        return "the checkpoint (PyTorch backend)"
    kind = "engine" if p.mode == "engine" else "previous engine"
    return f"{kind} {short_key(p.engine_key)}"


def _events(old: list[ProductStatus], new: list[ProductStatus],
            fallback: str) -> list[Event]:
    before = {p.gpu_product: p for p in old}
    events = []
    for p in new:
        prior = before.pop(p.gpu_product, None)
        if prior is not None and (prior.engine_key, prior.mode, prior.deployment) == (
                p.engine_key, p.mode, p.deployment):
            continue
        label = p.gpu or p.gpu_product
        if p.deployment is None:
            events.append(Event("Normal", "WaitingForEngine",
                                f"{label}: no engine ready yet; nothing is served there until "
                                f"one is (fallback {fallback})"))
        elif p.mode == "engine":
            was = f" (was {_what(prior)})" if prior is not None else ""
            events.append(Event("Normal", "ServingEngine",
                                f"{label}: serving engine {short_key(p.engine_key or '')} "
                                f"in Deployment {p.deployment}{was}"))
        else:
            events.append(Event("Normal", "ServingFallback", f"{label}: no engine ready yet; "
                                f"serving {_what(p)} in Deployment {p.deployment}"))
    for product, prior in before.items():
        if prior.deployment:
            events.append(Event("Normal", "ProductRemoved", f"{product} is no longer in the "
                                f"pool: Deployment {prior.deployment} removed"))
    return events


def summarize(ed: EngineDeployment, decision: Decision,
              observed: Iterable[ObservedDeployment], hashes: Mapping[str, str],
              failures: Iterable[ServingFailure] = ()) -> tuple[EngineDeploymentStatus,
                                                               list[Event]]:
    """The status and Events; ``hashes`` are the rendered Deployments' spec hashes by name,
    ``failures`` what kiln's programs in the serving pods refused (``pods``)."""
    old = ed.status or EngineDeploymentStatus()
    generation = int(ed.metadata.get("generation") or 0)
    by_name = {d.name: d for d in observed}
    products: list[ProductStatus] = []
    rolling = []
    if decision.pending:  # leave what exists as it is, and say so
        products = [ProductStatus(gpu_product=d.product, engine_key=d.engine_key,
                                  mode="engine" if d.mode == "engine" else "fallback",
                                  deployment=d.name, ready_replicas=d.ready_replicas)
                    for d in by_name.values()]
    for s in decision.serves:
        seen = by_name.get(s.deployment)
        products.append(ProductStatus(
            gpu_product=s.product, gpu=s.gpu, engine_key=s.engine_key, mode=s.mode,
            deployment=s.deployment, ready_replicas=seen.ready_replicas if seen else 0))
        if seen is None or seen.spec_hash != hashes.get(s.deployment) or not seen.rolled_out:
            rolling.append(s.deployment)
    for product in decision.waiting:
        gpu = catalogue.by_product(product)
        products.append(ProductStatus(gpu_product=product, gpu=gpu.name if gpu else None,
                                      mode="fallback"))
    products.sort(key=lambda p: p.gpu_product)
    kept = [d for d in by_name.values() if d.name not in decision.delete]
    ready, reconciling, stalled, reason, message = _conditions(
        ed, decision, products, rolling, _refusals(decision, failures))
    conditions = set_conditions(old.conditions, generation=generation, ready=ready,
                                reconciling=reconciling, stalled=stalled, reason=reason,
                                message=message)
    status = EngineDeploymentStatus(
        observed_generation=generation, conditions=conditions,
        replicas=sum(d.status_replicas for d in kept),
        ready_replicas=sum(d.ready_replicas for d in kept), products=products,
        gpus=",".join(p.gpu or p.gpu_product for p in products) or None,
        engine_keys=",".join(short_key(p.engine_key or "-") for p in products) or None)
    events = _events(old.products, products, ed.spec.fallback)
    was_stalled = any(c.type == "Stalled" and c.status == "True" and c.reason == reason
                      for c in old.conditions)
    if stalled and not was_stalled:
        events.append(Event("Warning", reason, message))
    return status, events

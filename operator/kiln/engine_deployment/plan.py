"""Plan an EngineDeployment from what exists: the pool's GPUs, the EngineBuild's engines and
the Deployments kiln owns.

Pure. ``decide`` says what each GPU product serves (an engine, or a fallback), which
Deployments stay as they are (a product that left the pool drains: kept for
``spec.pool.drainAfter``, then removed only once every other product is Ready) and which go;
``summarize`` turns that and the observed Deployments into the status and the Events for what
changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, get_args

from kiln.api import (
    Backend,
    EngineBuild,
    EngineBuildStatus,
    EngineDeployment,
    EngineDeploymentStatus,
    EngineStatus,
    ProductStatus,
    ServingMode,
    parse_duration,
)
from kiln.contract.key import short_key
from kiln.domain import catalogue
from kiln.domain.labels import ED_LABEL, GPU_PRODUCT_LABEL, SERVING_PRODUCT_LABEL, TRACK_LABEL
from kiln.domain.pool import served_products
from kiln.domain.status import Event, set_conditions
from kiln.engine_deployment.deployments import ObservedDeployment, deployment_name
from kiln.engine_deployment.honoured import unhonoured
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
    engine_upload: str | None = None
    """Which upload of the key (a rebuild of the same key has a new one: a rollout)."""
    rebuilding: bool = False
    """The EngineBuild builds this very key again (it went missing or was found damaged in
    the store): its pods serve it as they are meanwhile."""

    @property
    def label(self) -> str:
        return self.gpu or self.product


@dataclass(frozen=True)
class Missing:
    """A product that left the pool while kiln served it: its Deployment drains."""

    product: str
    compute_capability: str | None
    deployment: str | None
    """Its Deployment (kept while it drains), or None while it had none yet (its build goes on
    meanwhile)."""
    since: datetime
    message: str


@dataclass
class Decision:
    """What the EngineDeployment should have now."""

    serves: list[Serve] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    """Products with nothing to serve yet (fallback ``none``, or no previous engine)."""
    kept: list[str] = field(default_factory=list)
    """Owned Deployments left exactly as they are (a product in the pool whose engine is not
    known yet, or one that drains)."""
    missing: list[Missing] = field(default_factory=list)
    """Products that left the pool and are still remembered (their Deployment kept)."""
    pool: Mapping[str, str] = field(default_factory=dict)
    """The GPU products present (product → compute capability)."""
    delete: list[str] = field(default_factory=list)
    """Owned Deployments no product wants any more."""
    failed: list[str] = field(default_factory=list)
    """``target: message`` of each failed engine a product needs."""
    stalled: tuple[str, str] | None = None
    """(reason, message): nothing can progress until someone changes something."""
    pending: tuple[str, str] | None = None
    """(reason, message): waiting for something outside (the EngineBuild); Deployments are
    left as they are."""
    ignored: dict[str, str] = field(default_factory=dict)
    """Product → the runtime options its engine cannot honour (kiln.trtllm.runtime)."""
    held: dict[str, str] = field(default_factory=dict)
    """Kept Deployments held back from a new key (a canary, or a refused key), and why."""


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
        upload = entry.upload
        if (current is not None and current.engine_key == entry.key
                and current.engine_upload is None):
            upload = None  # a Deployment from before uploads were named: no roll for the name
        return _with(base, "engine", base.backend, entry.key, entry.uri, upload)
    if (entry is not None and current is not None and current.mode == "engine"
            and current.engine_key == entry.key and current.engine_uri):
        # The same key built again (lost from the store, or set aside as damaged): the pods
        # have it and serve on; nothing rolls until the rebuilt engine is ready.
        return replace(_with(base, "engine", _backend(current.backend, base.backend),
                             current.engine_key, current.engine_uri, current.engine_upload),
                       rebuilding=True)
    if ed.spec.fallback == "pytorch":
        return _with(base, "fallback", "pytorch", None, None)
    if ed.spec.fallback != "previous":
        return None
    if entry is not None and entry.previous_key and entry.previous_uri:
        same = current is not None and current.engine_key == entry.previous_key
        backend = _backend(current.backend if same and current else None, base.backend)
        upload = current.engine_upload if same and current else None
        return _with(base, "fallback", backend, entry.previous_key, entry.previous_uri, upload)
    if current is not None and current.engine_key and current.engine_uri:
        return _with(base, "fallback", _backend(current.backend, base.backend),
                     current.engine_key, current.engine_uri, current.engine_upload)
    return None


def _with(base: Serve, mode: ServingMode, backend: Backend, key: str | None,
          uri: str | None, upload: str | None = None) -> Serve:
    return Serve(base.product, base.gpu, base.compute_capability, base.deployment, mode,
                 backend, key, uri, upload)


def decide(ed: EngineDeployment, eb: EngineBuild | None, pool: Mapping[str, str],
           observed: Iterable[ObservedDeployment], now: datetime) -> Decision:
    """What each product serves; ``pool`` are the GPU products present (product → compute
    capability), ``observed`` the Deployments this object owns. Raises KeyError for a GPU name
    the catalogue does not know."""
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
    refused = [u for u in unhonoured(ed, eb, None) if u.refused]
    if refused:
        return Decision(stalled=("RuntimeOptionRefused", "; ".join(u.text() for u in refused)))
    if (ed.spec.server.kind == "triton" and ed.spec.rollout is not None
            and ed.spec.rollout.gate.enabled):
        return Decision(stalled=(
            "GateUnsupported", "spec.rollout.gate measures OpenAI-compatible endpoints "
            "(/v1/completions), which server.kind triton does not serve: set "
            "spec.rollout.gate.enabled false (a canary promoted after the analysis time) or "
            "use server.kind trtllm-serve"))
    products = served_products(ed, pool)
    current = {d.product: d for d in owned}
    result = Decision(pool=dict(pool))
    before = {p.gpu_product: p for p in (ed.status.products if ed.status else [])}
    for product, cc in products.items():
        if product not in pool and product in current:
            continue  # it left the pool: it drains, below
        if product not in pool and product in before:
            _absent(ed, product, before[product], result, now)  # waited there: not placed now
            continue
        entry = engine_for(eb.status, product)
        if entry is None and product in current:
            # The EngineBuild's status has no engine for it (yet): it is catching up with the
            # pool. What serves stays as it is: nothing dropped or rolled for want of a status.
            result.kept.append(current[product].name)
            continue
        if entry is not None and entry.state == "Failed":
            result.failed.append(f"{entry.target}: {entry.message or 'build failed'}")
        serve = _serve_one(ed, eb, product, cc, entry, current.get(product))
        lost = [u.text() for u in unhonoured(ed, eb, entry)] if serve and serve.engine_key \
            and serve.backend == "tensorrt" else []
        if lost:
            result.ignored[product] = "; ".join(lost)[:1024]
        if serve is not None:
            result.serves.append(serve)
        else:
            result.waiting.append(product)
    _drain(ed, products, pool, owned, result, now)
    wanted = {s.deployment for s in result.serves} | set(result.kept)
    result.delete = sorted(d.name for d in owned if d.name not in wanted)
    return result


def _absent(ed: EngineDeployment, product: str, prior: ProductStatus, result: Decision,
            now: datetime) -> None:
    """A product that left the pool before it had a Deployment: remembered (its engine still
    built) for ``drainAfter``, then forgotten; nothing is placed where no node is."""
    since = prior.missing_since or now
    until = since + parse_duration(ed.spec.pool.drain_after)
    if now < until:
        result.missing.append(Missing(
            product, prior.compute_capability, None, since,
            f"no node in the pool has {GPU_PRODUCT_LABEL}={product} since {since.isoformat()}: "
            f"its engine is kept until {until.isoformat()} at least"))


def _drain(ed: EngineDeployment, products: Mapping[str, str], pool: Mapping[str, str],
           owned: list[ObservedDeployment], result: Decision, now: datetime) -> None:
    """Keep the Deployment of each product that left the pool for ``drainAfter``; after that
    remove it only once every other product is Ready, and never while it is the only one with
    ready pods."""
    before = {p.gpu_product: p for p in (ed.status.products if ed.status else [])}
    grace = parse_duration(ed.spec.pool.drain_after)
    serving = [d for d in owned if d.product in pool and d.ready_replicas > 0]
    others_ready = all(d.rolled_out for d in owned if d.product in pool) and bool(serving)
    for d in owned:
        if d.product in pool or d.product not in products:
            continue  # in the pool, or no longer wanted by the spec (deleted below)
        prior = before.get(d.product)
        since = prior.missing_since if prior and prior.missing_since else now
        label = f"{GPU_PRODUCT_LABEL}={d.product}"
        why = f"no node in the pool has {label} since {since.isoformat()}"
        if now - since < grace:
            until = (since + grace).isoformat()
            message = f"{why}: Deployment {d.name} keeps serving until {until} at least"
        elif not serving:
            message = f"{why}: Deployment {d.name} is kept, no other product has ready pods"
        elif not others_ready:
            message = f"{why}: Deployment {d.name} is kept until every other product is Ready"
        else:
            continue  # drained: deleted below
        result.kept.append(d.name)
        cc = prior.compute_capability if prior else products.get(d.product)
        result.missing.append(Missing(d.product, cc, d.name, since, message))


def _conditions(ed: EngineDeployment, decision: Decision, products: list[ProductStatus],
                rolling: list[str]) -> tuple[bool, bool, bool, str, str]:
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
    if decision.missing:
        return False, True, False, "ProductMissing", "; ".join(
            f"{m.product}: {m.message}" for m in decision.missing)
    if decision.failed:
        return False, False, True, "BuildFailed", "; ".join(decision.failed) + \
            f" (serving {served})"
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
        label = p.gpu or p.gpu_product
        if p.missing_since and not (prior and prior.missing_since):
            events.append(Event("Warning", "ProductMissing", f"{label}: {p.message}"))
        elif prior is not None and prior.missing_since and not p.missing_since:
            events.append(Event("Normal", "ProductReturned", f"{label} is in the pool again: "
                                f"Deployment {p.deployment} serves on"))
        if prior is not None and (prior.engine_key, prior.mode, prior.deployment) == (
                p.engine_key, p.mode, p.deployment):
            continue
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
            events.append(Event("Normal", "ProductRemoved", f"{product} is no longer served: "
                                f"Deployment {prior.deployment} removed"))
    return events


def _memory(prior: ProductStatus | None) -> dict[str, object]:
    """What a product's status entry remembers across passes that cannot recompute it."""
    if prior is None:
        return {}
    return {"compute_capability": prior.compute_capability,
            "missing_since": prior.missing_since, "message": prior.message,
            "artifacts": prior.artifacts, "artifacts_message": prior.artifacts_message,
            "start_seconds": prior.start_seconds}


def scale_status(name: str, products: list[ProductStatus],
                 kept: Iterable[ObservedDeployment]) -> dict[str, Any]:
    """What ``/scale`` reports: the replicas and pod selector of the first product served
    (``spec.replicas`` is per product, so an HPA must count one product's pods)."""
    running = {d.name: d for d in kept}
    for product in products:
        seen = running.get(product.deployment or "")
        if seen is not None:
            return {"scale_replicas": seen.status_replicas,
                    "selector": f"{ED_LABEL}={name},{SERVING_PRODUCT_LABEL}="
                                f"{product.gpu_product},!{TRACK_LABEL}"}
    return {"scale_replicas": 0, "selector": f"{ED_LABEL}={name},!{TRACK_LABEL}"}


def summarize(ed: EngineDeployment, decision: Decision,
              observed: Iterable[ObservedDeployment],
              hashes: Mapping[str, str]) -> tuple[EngineDeploymentStatus, list[Event]]:
    """The status and Events; ``hashes`` are the rendered Deployments' spec hashes by name."""
    old = ed.status or EngineDeploymentStatus()
    generation = int(ed.metadata.get("generation") or 0)
    by_name = {d.name: d for d in observed}
    products: list[ProductStatus] = []
    rolling = []
    if decision.pending or decision.stalled:  # leave what exists as it is, and say so
        earlier = {p.gpu_product: p for p in old.products}
        products = [ProductStatus(gpu_product=d.product, engine_key=d.engine_key,
                                  mode="engine" if d.mode == "engine" else "fallback",
                                  deployment=d.name, ready_replicas=d.ready_replicas,
                                  ).model_copy(update=_memory(earlier.get(d.product)))
                    for d in by_name.values()]
    for s in decision.serves:
        seen = by_name.get(s.deployment)
        products.append(ProductStatus(
            gpu_product=s.product, gpu=s.gpu, engine_key=s.engine_key, mode=s.mode,
            deployment=s.deployment, ready_replicas=seen.ready_replicas if seen else 0,
            compute_capability=s.compute_capability,
            message=decision.ignored.get(s.product)))
        if seen is None or seen.spec_hash != hashes.get(s.deployment) or not seen.rolled_out:
            rolling.append(s.deployment)
    missing = {m.deployment: m for m in decision.missing}
    for name in decision.kept:
        d = by_name.get(name)
        if d is None:
            continue
        gone = missing.get(name)
        gpu = catalogue.by_product(d.product)
        prior = next((p for p in old.products if p.gpu_product == d.product), None)
        products.append(ProductStatus(
            gpu_product=d.product, gpu=gpu.name if gpu else None, engine_key=d.engine_key,
            mode="engine" if d.mode == "engine" else "fallback", deployment=d.name,
            ready_replicas=d.ready_replicas,
            compute_capability=gone.compute_capability if gone else (
                prior.compute_capability if prior else None),
            missing_since=gone.since if gone else None,
            message=gone.message if gone else decision.held.get(name) or "waiting for the "
            "EngineBuild's engine for this product; the Deployment serves as it is meanwhile"))
        if not gone and not d.rolled_out:
            rolling.append(d.name)
    for product in decision.waiting:
        gpu = catalogue.by_product(product)
        products.append(ProductStatus(gpu_product=product, gpu=gpu.name if gpu else None,
                                      mode="fallback", compute_capability=decision.pool.get(
                                          product)))
    for m in decision.missing:
        if m.deployment is None:
            gpu = catalogue.by_product(m.product)
            products.append(ProductStatus(
                gpu_product=m.product, gpu=gpu.name if gpu else None, mode="fallback",
                compute_capability=m.compute_capability, missing_since=m.since,
                message=m.message))
    products.sort(key=lambda p: p.gpu_product)
    kept = [d for d in by_name.values() if d.name not in decision.delete]
    ready, reconciling, stalled, reason, message = _conditions(
        ed, decision, products, rolling)
    conditions = set_conditions(old.conditions, generation=generation, ready=ready,
                                reconciling=reconciling, stalled=stalled, reason=reason,
                                message=message)
    status = EngineDeploymentStatus(
        observed_generation=generation, conditions=conditions,
        replicas=sum(d.status_replicas for d in kept),
        ready_replicas=sum(d.ready_replicas for d in kept), products=products,
        gpus=",".join(p.gpu or p.gpu_product for p in products) or None,
        engine_keys=",".join(short_key(p.engine_key or "-") for p in products) or None,
        rollouts=old.rollouts, canary=old.canary,  # of record, until the rollouts' own pass
        **scale_status(str(ed.metadata.get("name", "")), products, kept))
    events = _events(old.products, products, ed.spec.fallback)
    said = {p.gpu_product: p.message for p in old.products}
    events += [Event("Warning", "RuntimeOptionIgnored", f"{product}: {text}")
               for product, text in decision.ignored.items() if said.get(product) != text]
    was_stalled = any(c.type == "Stalled" and c.status == "True" and c.reason == reason
                      for c in old.conditions)
    if stalled and not was_stalled:
        events.append(Event("Warning", reason, message))
    return status, events

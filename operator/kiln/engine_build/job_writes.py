"""The writes of the key's build Job: create it, join it as an owner, replace one of an
outdated template or one that finished without its engine, release it; each is
preconditioned on the Job as read (compare-and-swap on uid and resourceVersion), so two
EngineBuilds of one key never lose or duplicate a Job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from kiln import metrics
from kiln.api import EngineBuild
from kiln.config import OperatorConfig
from kiln.contract.key import short_key
from kiln.contract.task import BuildTask
from kiln.domain import pod_policy
from kiln.domain.aot import warmup_for
from kiln.domain.labels import HASH_ANNOTATION, KEY_ANNOTATION
from kiln.engine_build import render, signing
from kiln.engine_build.jobs import ObservedJob, job_name, observe
from kiln.engine_build.pending import Stuck
from kiln.engine_build.plan import Want
from kiln.errors import ImageNotAllowed, PodOverrideNotAllowed, Unavailable
from kiln.kube.client import Kube
from kiln.trust.keys import Trust

log = logging.getLogger(__name__)
CREATED_GRACE_SECONDS = 30.0
"""How long a Job created (or joined) here counts as observed before the index shows it."""
MAX_CACHED = 100_000
SWAPS = 3
"""Compare-and-swap attempts on a shared Job's owners before the next pass tries again."""
NEVER_RAN = frozenset({"CreateFailed", "Unschedulable", "ImagePullFailed", "ContainerFailed"})
"""Why a Job's pod never ran: a Job of an outdated template is then replaced."""


class Jobs(Protocol):
    """The build Jobs the operator last saw (Kopf's index)."""

    def by_key(self, namespace: str, key: str) -> ObservedJob | None: ...


@dataclass(frozen=True)
class Build:
    """What one pass renders this EngineBuild's Jobs from."""

    namespace: str
    name: str
    uid: str
    eb: EngineBuild
    image: str
    store: str
    identity: str
    origin: dict[str, str]
    endpoints: dict[str, str] | None = None
    """The endpoints the build reads from, by value (``BuildTask.source.endpoints``)."""
    calibration: dict[str, Any] | None = None
    """The calibration data's identity and origin (``BuildTask.calibration``)."""


class JobWrites:
    """The Jobs this process created, joined or replaced, until the index shows it (a
    grace of ``CREATED_GRACE_SECONDS``): these save a duplicate create, never decide."""

    def __init__(self, kube: Kube, config: OperatorConfig, trust: Trust) -> None:
        self.kube, self.config, self.trust = kube, config, trust
        self._created: dict[tuple[str, str], tuple[ObservedJob, float]] = {}
        """Jobs this process created or joined, until the index shows them."""
        self._replaced: set[str] = set()
        """Uids of Jobs this process deleted to build their key again: the index may still
        show one for a moment."""

    def image(self, eb: EngineBuild) -> str:
        """The builder image of ``eb``'s Jobs; ``ImageNotAllowed`` (the EngineBuild stalls,
        no Job is created) for one outside the operator's allowed list."""
        image = eb.spec.toolchain.image or self.config.builder_image
        if not self.config.image_allowed(image):
            allowed = ", ".join(self.config.allowed_builder_images)
            raise ImageNotAllowed(
                f"builder image {image} is not allowed: the operator's allowed builder images "
                f"(KILN_ALLOWED_BUILDER_IMAGES) are {allowed}")
        return image

    def check_pod_policy(self, eb: EngineBuild) -> None:
        """``PodOverrideNotAllowed`` (the EngineBuild stalls, no Job is created) for a
        security-context override or priority class beyond the operator's pod policy."""
        job = eb.spec.job
        problems = pod_policy.security_problems(job.security_context, self.config.pod_security,
                                                "spec.job.securityContext")
        priority = pod_policy.priority_problem(job.priority_class_name,
                                               self.config.allowed_priority_classes,
                                               "spec.job.priorityClassName")
        if problems or priority:
            raise PodOverrideNotAllowed(pod_policy.message(
                [*problems, *([priority] if priority else [])], self.config.pod_security,
                self.config.allowed_priority_classes))

    def job(self, jobs: Jobs, namespace: str, key: str) -> ObservedJob | None:
        """The key's Job from the index (not one deleted here to build the key again), else
        one created here moments ago (for a while)."""
        found = jobs.by_key(namespace, key)
        if found is not None and found.uid in self._replaced:
            found = None
        if found is not None:
            self._created.pop((namespace, key), None)
            return found
        recent = self._created.get((namespace, key))
        if recent is None:
            return None
        if time.monotonic() - recent[1] > CREATED_GRACE_SECONDS:
            self._created.pop((namespace, key), None)
            return None
        return recent[0]

    def replace_outdated(self, build: Build, wants: list[Want],
                         observed: dict[str, ObservedJob],
                         stuck: Callable[[dict[str, ObservedJob]], dict[str, Stuck]]
                         ) -> list[str]:
        """Delete this object's own Jobs whose pod never ran (refused at creation, not
        scheduled, image not pulled) and whose pod template is not what the spec renders now
        (a ``spec.job`` fix: security context, priority class, tolerations, resources): the
        Job controller would retry the old template forever. A Job whose pod runs, or that
        other EngineBuilds share, is left as it is. The keys whose Job went."""
        namespace, uid = build.namespace, build.uid
        gone = []
        for want in wants:
            job = observed.get(want.key)
            if (job is None or job.state != "Active" or job.owner_uids != (uid,)
                    or job.template_hash is None or job.ran):
                continue
            why = stuck({want.key: job}).get(want.key)
            if why is None or why.reason not in NEVER_RAN:
                continue
            rendered = self.render(build, want)
            if rendered["metadata"]["annotations"][HASH_ANNOTATION] == job.template_hash:
                continue
            found = self.kube.read_job(namespace, job.name)
            if found is None:
                continue
            now = observe(found)  # the index may lag: another EngineBuild may have joined
            if (now.owner_uids != (uid,) or now.template_hash != job.template_hash
                    or now.ran):
                continue
            if not self.kube.delete_job(namespace, job.name, uid=found["metadata"]["uid"],
                                        resource_version=found["metadata"]["resourceVersion"]):
                raise Unavailable(f"Job {job.name} changed while replacing it; trying again",
                                  reason="Conflict")
            log.info("deleting Job %s/%s (%s): its pod template is not what the spec renders "
                     "now", namespace, job.name, why.reason)
            self._created.pop((namespace, want.key), None)
            gone.append(want.key)
        return gone

    def replace(self, namespace: str, job: ObservedJob) -> None:
        """Delete a failed Job (or one that finished without its engine) to build its key
        again; one already gone, or another Job of its name, is left alone."""
        found = self.kube.read_job(namespace, job.name)
        if found is None or (job.uid is not None and found["metadata"]["uid"] != job.uid):
            return  # gone already (another EngineBuild of the key replaced it)
        log.info("deleting %s Job %s/%s to build engine %s again", job.state.lower(),
                 namespace, job.name, short_key(job.key))
        if not self.kube.delete_job(namespace, job.name, uid=found["metadata"]["uid"],
                                    resource_version=found["metadata"]["resourceVersion"]):
            raise Unavailable(f"Job {job.name} changed while replacing it; trying again",
                              reason="Conflict")
        if len(self._replaced) >= MAX_CACHED:
            self._replaced.clear()
        self._replaced.add(found["metadata"]["uid"])

    def read_built(self, build: Build, want: Want, job: ObservedJob) -> dict[str, Any] | None:
        """The key's succeeded Job as the API server has it, to sign what it built; None when
        it is gone or another Job holds its name; ``ForeignJob`` when it is not kiln's render
        of the key."""
        body = self.kube.read_job(build.namespace, job.name)
        if body is None or (job.uid is not None and body["metadata"].get("uid") != job.uid):
            return None  # the next pass reads it
        foreign_job(body, self.render(build, want))
        return body

    def ensure(self, build: Build, want: Want, *, exists: bool = False) -> None:
        """Create the key's Job, or join it as an owner (``exists``: skip the create). Joining
        swaps the owners on the Job's resourceVersion; a Job deleted meanwhile is created."""
        namespace, name, uid = build.namespace, build.name, build.uid
        job = self.render(build, want)
        for _ in range(SWAPS):
            if not exists and self.kube.create_job(job):
                metrics.record_build_started(once=f"{namespace}/{job_name(want.key)}")
                log.info("created Job %s/%s for engine %s", namespace, job_name(want.key),
                         short_key(want.key))
                self._created[(namespace, want.key)] = (
                    ObservedJob(job_name(want.key), want.key, "Active", (uid,)),
                    time.monotonic())
                return
            existing = self.kube.read_job(namespace, job_name(want.key))
            if existing is None:
                exists = False  # deleted meanwhile (released by its last owner): create it
                continue
            current = observe(existing)
            foreign_job(existing, job)  # never joined unless it is kiln's render of the key
            if uid not in current.owner_uids:
                owners = [*existing["metadata"].get("ownerReferences", []),
                          render.build_owner(name, uid)]
                if not self.kube.set_job_owners(namespace, current.name, owners,
                                                existing["metadata"]["resourceVersion"]):
                    exists = True
                    continue  # the Job moved meanwhile: read it again
            self._created[(namespace, want.key)] = (
                replace(current, owner_uids=(*current.owner_uids, uid)), time.monotonic())
            return
        raise Unavailable(f"the Job of engine {short_key(want.key)} kept changing while "
                          "joining it; trying again", reason="Conflict")

    def render(self, build: Build, want: Want) -> dict[str, Any]:
        """The Job kiln renders for ``want`` of this EngineBuild."""
        eb, identity, origin = build.eb, build.identity, build.origin
        task = BuildTask.for_build(
            key=want.key, weights_identity=identity, origin=origin, source=eb.spec.model.source,
            revision=eb.spec.model.revision, build=eb.spec.build,
            gpu_product=want.target.gpu_product,
            compute_capability=want.target.compute_capability, store=build.store,
            builder_image=build.image, credentials_from_env=bool(eb.spec.model.credentials_secret),
            endpoints=build.endpoints, calibration=build.calibration,
            warmup=warmup_for(eb.spec.build, self.config.warmup_runtime))
        return render.render_job(
            namespace=build.namespace, owner_name=build.name, owner_uid=build.uid, spec=eb.spec,
            want=want, image=build.image, task_json=task.to_json(), config=self.config,
            trusted_keys=self.trust.bundle)

    def release(self, namespace: str, job: ObservedJob, uid: str) -> None:
        """Stop owning a Job this object no longer wants; delete it when nobody owns it. Both
        are preconditioned on the Job as read (uid, resourceVersion), so a Job another
        EngineBuild has just joined is never deleted."""
        for _ in range(SWAPS):
            existing = self.kube.read_job(namespace, job.name)
            if existing is None:
                return
            meta = existing["metadata"]
            refs = meta.get("ownerReferences", [])
            owners = [r for r in refs if r["uid"] != uid]
            if len(owners) == len(refs):
                return  # not ours (any more)
            if owners:
                if self.kube.set_job_owners(namespace, job.name, owners,
                                            meta["resourceVersion"]):
                    return
            elif self.kube.delete_job(namespace, job.name, uid=meta["uid"],
                                    resource_version=meta["resourceVersion"]):
                log.info("deleted Job %s/%s: no EngineBuild wants engine %s any more",
                         namespace, job.name, short_key(job.key))
                return
        raise Unavailable(f"Job {job.name} kept changing while releasing it; trying again",
                          reason="Conflict")


def foreign_job(job: dict[str, Any], rendered: dict[str, Any]) -> None:
    """``ForeignJob`` (retried: its author may delete it) when the Job holding the key's name
    is not kiln's render of it: it is never joined, signed, changed nor deleted."""
    problem = signing.job_problem(job, rendered)
    if problem is not None:
        name = job.get("metadata", {}).get("name")
        raise Unavailable(
            f"Job {job['metadata'].get('namespace')}/{name} holds the name of engine "
            f"{short_key(rendered['metadata']['annotations'][KEY_ANNOTATION])}'s build Job "
            f"but is not the Job kiln renders for it ({problem}): kiln neither joins nor "
            "signs it, and changes nothing of it; delete it to let kiln build",
            reason="ForeignJob")

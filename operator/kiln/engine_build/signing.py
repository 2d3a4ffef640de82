"""The operator signs an engine only after the key's own build Job succeeded.

What it checks first: the Job is the one kiln renders for the key (``job_problem``: its name is
the key's, and its pod template is kiln's render of it, field by field, with nothing added:
no other containers, volumes, mounts or environment, no host namespaces, a security context
kiln renders); one of its own pods (the Job's controller-uid label and a controller owner
reference to it, a spec that is the Job's template) ended with exit code 0 and a summary saying
it wrote the manifest (not found one), with the manifest's sha256, and no pod of it reported
another digest; the stored ``manifest.json`` has exactly that digest, names the key, and its
inputs hash to it. A build pod can write anything to the store, but only its own termination
message, which only it and the kubelet can set; the digest binds the manifest to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kiln.contract import env as names
from kiln.contract import provenance
from kiln.contract.key import key_of, short_key
from kiln.contract.manifest import Manifest
from kiln.contract.task import BuildTask
from kiln.domain.labels import KEY_ANNOTATION, QUEUE_LABEL
from kiln.domain.podspec import container_security, pod_security
from kiln.engine_build import queued
from kiln.engine_build.jobs import BUILDER, job_name

CONTROLLER_UID = ("batch.kubernetes.io/controller-uid", "controller-uid")
"""The labels the Job controller gives a Job's pods (its selector)."""
_JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
_SCHEDULING = frozenset({"nodeSelector", "tolerations", "affinity", "priorityClassName"})
"""Pod fields that may differ between the EngineBuilds sharing a key (where it runs only)."""
_JOB_VARIES = frozenset({"backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"})
_JOB_DEFAULTS: dict[str, Any] = {"completions": 1, "parallelism": 1,
                                 "completionMode": "NonIndexed", "suspend": False,
                                 "manualSelector": False,
                                 "podReplacementPolicy": ("TerminatingOrFailed", "Failed")}
_POD_DEFAULTS: dict[str, Any] = {"dnsPolicy": "ClusterFirst",
                                 "schedulerName": "default-scheduler",
                                 "terminationGracePeriodSeconds": 30}
_CONTAINER_DEFAULTS: dict[str, Any] = {"terminationMessagePath": "/dev/termination-log",
                                       "imagePullPolicy": ("Always", "IfNotPresent", "Never")}
_ANY = object()


@dataclass(frozen=True)
class Built:
    """What a succeeded build Job's pod reported it committed."""

    job: provenance.JobRef
    manifest_sha256: str


def _extra(found: dict[str, Any], rendered: dict[str, Any], defaults: dict[str, Any],
           varies: frozenset[str], what: str) -> str | None:
    """A field of ``found`` that kiln did not render (other than an API default)."""
    for name, value in found.items():
        if name in rendered or name in varies:
            continue
        default = defaults.get(name, _ANY)
        if default is _ANY or not (value == default or (isinstance(default, tuple)
                                                        and value in default)):
            return f"{what} sets {name}, which kiln does not render"
    return None


def _env_view(env: list[dict[str, Any]]) -> list[Any]:
    """The environment with what may differ between the EngineBuilds of one key blanked: the
    task (compared apart) and the trusted keys (they rotate). The credentials Secret's name is
    compared: it is part of the key's origin."""
    view = []
    for original in env:
        entry = json.loads(json.dumps(original))
        if entry.get("name") in (names.TASK, names.TRUSTED_KEYS) and "value" in entry:
            entry["value"] = "*"
        view.append(entry)
    return view


def _task(container: dict[str, Any]) -> BuildTask | None:
    value = next((e.get("value") for e in container.get("env") or []
                  if isinstance(e, dict) and e.get("name") == names.TASK), None)
    try:
        return BuildTask.from_json(value or "")
    except Exception:  # any malformed task disqualifies the Job
        return None


def _container_problem(found: dict[str, Any], rendered: dict[str, Any]) -> str | None:
    if found.get("name") != rendered["name"] or found.get("image") != rendered["image"]:
        return f"its container is not {rendered['name']} running {rendered['image']}"
    if found.get("command") != rendered.get("command") or found.get("args") != rendered.get(
            "args"):
        return "its container does not run kiln-builder as kiln renders it"
    extra = _extra(found, rendered, _CONTAINER_DEFAULTS, frozenset({"resources"}),
                   "its container")
    if extra:
        return extra
    for name in ("volumeMounts", "terminationMessagePolicy", "workingDir", "envFrom",
                 "volumeDevices"):
        if found.get(name) != rendered.get(name):
            return f"its container's {name} is not what kiln renders"
    if _env_view(found.get("env") or []) != _env_view(rendered.get("env") or []):
        return "its container's environment is not what kiln renders (variables added, " \
               "removed or changed)"
    context = found.get("securityContext") or {}
    if not isinstance(context, dict) or container_security(context) != context:
        return "its container's securityContext is not one kiln renders"
    task, want = _task(found), _task(rendered)
    if task is None or want is None:
        return "its task is not kiln's"
    if task != want:
        differ = sorted(name for name in BuildTask.model_fields
                        if getattr(task, name) != getattr(want, name))
        return f"its task is not kiln's ({', '.join(differ)} differ)"
    return None


def pod_spec_problem(found: dict[str, Any], rendered: dict[str, Any]) -> str | None:
    """Why the pod spec ``found`` is not ``rendered`` (kiln's) as far as what runs goes."""
    extra = _extra(found, rendered, _POD_DEFAULTS, _SCHEDULING, "its pod")
    if extra:
        return extra
    for name in ("restartPolicy", "volumes", "enableServiceLinks",
                 "automountServiceAccountToken"):
        if found.get(name) != rendered.get(name):
            return f"its pod's {name} is not what kiln renders"
    context = found.get("securityContext") or {}
    if not isinstance(context, dict) or pod_security(context) != context:
        return "its pod's securityContext is not one kiln renders"
    containers = found.get("containers") or []
    if found.get("initContainers") or len(containers) != len(rendered["containers"]):
        return f"its pod has other containers than kiln's {BUILDER}"
    for have, want in zip(containers, rendered["containers"], strict=True):
        problem = _container_problem(have, want)
        if problem:
            return problem
    return None


def _policy(policy: Any) -> Any:
    """A ``podFailurePolicy`` with the apiserver's defaults taken out: empty
    ``onPodConditions``, a condition's ``status: "True"``."""
    if not isinstance(policy, dict) or not isinstance(policy.get("rules"), list):
        return policy
    rules = []
    for given in policy["rules"]:
        rule = given
        if isinstance(given, dict):
            rule = {k: v for k, v in given.items() if not (k == "onPodConditions" and v == [])}
            if isinstance(rule.get("onPodConditions"), list):
                rule["onPodConditions"] = [
                    {k: v for k, v in c.items() if not (k == "status" and v == "True")}
                    if isinstance(c, dict) else c for c in rule["onPodConditions"]]
        rules.append(rule)
    return {**policy, "rules": rules}


def job_problem(job: dict[str, Any], rendered: dict[str, Any]) -> str | None:
    """Why ``job`` (as the apiserver returns it) is not ``rendered``, kiln's render of the
    key's Job; None if it is. Fields kiln renders compare equal (scheduling, resources and
    limits may differ: EngineBuilds of one key share the Job); nothing else may be set but the
    apiserver's defaults."""
    meta, want_meta = job.get("metadata") or {}, rendered["metadata"]
    key = want_meta["annotations"][KEY_ANNOTATION]
    if (meta.get("annotations") or {}).get(KEY_ANNOTATION) != key:
        return "it is not annotated with the key"
    if meta.get("name") != job_name(key):
        return f"it is not named {job_name(key)}"
    queue = (want_meta.get("labels") or {}).get(QUEUE_LABEL)
    if (meta.get("labels") or {}).get(QUEUE_LABEL) != queue:
        return f"its queue is not kiln's ({queue or 'none'})"
    spec, want_spec = job.get("spec") or {}, rendered["spec"]
    if not isinstance(spec, dict):
        return "it has no spec"
    extra = _extra({k: v for k, v in spec.items() if k != "selector"}, want_spec,
                   _JOB_DEFAULTS, _JOB_VARIES, "it")
    if extra:
        return extra
    if _policy(spec.get("podFailurePolicy")) != _policy(want_spec.get("podFailurePolicy")):
        return "its podFailurePolicy is not kiln's"
    if spec.get("managedBy") not in (None, "kubernetes.io/job-controller"):
        return "it is managed by another controller"
    selector = spec.get("selector")
    uid = meta.get("uid")
    if selector is not None and selector != {"matchLabels": {CONTROLLER_UID[0]: uid}}:
        return "its selector is not the Job controller's own"
    template = spec.get("template") or {}
    template_meta = template.get("metadata") or {}
    admission = _KueueAdmission((want_meta.get("labels") or {}).get(QUEUE_LABEL))
    allowed = {**admission.labels,
               **want_spec["template"]["metadata"].get("labels", {}),
               **{label: uid for label in CONTROLLER_UID},
               **{label: meta.get("name") for label in _JOB_NAME_LABELS}}
    if not _within(template_meta.get("labels") or {}, allowed):
        return "its pods get labels kiln does not give them"
    if not _within(template_meta.get("annotations") or {}, admission.annotations):
        return "its pods get annotations kiln does not give them"
    pod = dict(template.get("spec") or {})
    if admission.gates and pod.get("schedulingGates") == admission.gates:
        del pod["schedulingGates"]
    return pod_spec_problem(pod, want_spec["template"]["spec"])


@dataclass(frozen=True)
class _KueueAdmission:
    """What Kueue may have written into the pod template of a Job of LocalQueue ``queue``
    when it admitted it (``queued.ADMISSION_*``); nothing for a Job kiln did not queue. Its
    node selector and tolerations (the flavor's) are scheduling, which may differ anyway."""

    queue: str | None

    @property
    def labels(self) -> dict[str, Any]:
        return _wildcards(queued.admission_labels(self.queue)) if self.queue else {}

    @property
    def annotations(self) -> dict[str, Any]:
        return _wildcards(queued.ADMISSION_ANNOTATIONS) if self.queue else {}

    @property
    def gates(self) -> list[dict[str, str]]:
        return list(queued.ADMISSION_GATES) if self.queue else []


def _wildcards(values: dict[str, str | None]) -> dict[str, Any]:
    """Kueue's values with None (any) as ``_ANY``."""
    return {k: _ANY if v is None else v for k, v in values.items()}


def _within(found: dict[str, Any], allowed: dict[str, Any]) -> bool:
    """Whether every entry of ``found`` is allowed: its key is, with that value (or any, where
    ``_ANY``); a value kiln expects but lacks (None) allows nothing."""
    return all(k in allowed and allowed[k] is not None and (allowed[k] is _ANY or allowed[k] == v)
               for k, v in found.items())


_POD_SET_LATER = frozenset({"nodeName", "serviceAccountName", "serviceAccount", "tolerations",
                            "priority", "preemptionPolicy", "schedulingGates"})
"""Pod fields that the scheduler and admission set on a Job's pod and its template lacks
(binding, the default ServiceAccount, default tolerations, the priority class's value), or
that differ from it later (Kueue's topology ungater lifts the template's scheduling gate)."""


def _own_pod(pod: dict[str, Any], job: dict[str, Any]) -> bool:
    """Whether ``pod`` is the Job's own: its controller-uid label, a controller owner
    reference to the Job, and a spec that is the Job's template, whole: only what the
    scheduler and admission set may differ (``_POD_SET_LATER``; a container's resources,
    which a LimitRange may fill in). So a pod a tenant creates with the Job's labels, owner
    reference and tracking finalizer, but with a lifecycle hook, an exec probe, host aliases,
    DNS config, stdin or a TTY, ephemeral containers, is not the Job's."""
    meta, uid = pod.get("metadata") or {}, job["metadata"]["uid"]
    labels = meta.get("labels") or {}
    if not any(labels.get(label) == uid for label in CONTROLLER_UID):
        return False
    if not any(r.get("uid") == uid and r.get("controller") is True and r.get("kind") == "Job"
               for r in meta.get("ownerReferences") or []):
        return False
    template = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    spec = pod.get("spec") or {}
    if spec.get("serviceAccountName") not in (template.get("serviceAccountName"), "default") \
            or (template.get("serviceAccountName") and spec.get("serviceAccountName")
                != template.get("serviceAccountName")):
        return False
    names = (set(spec) | set(template)) - _POD_SET_LATER - {"containers"}
    if any(spec.get(name) != template.get(name) for name in names):
        return False
    containers, rendered = spec.get("containers") or [], template.get("containers") or []
    if len(containers) != len(rendered):
        return False
    return all({k: v for k, v in have.items() if k != "resources"}
               == {k: v for k, v in want.items() if k != "resources"}
               for have, want in zip(containers, rendered, strict=True))


def built(job: dict[str, Any], pods: list[dict[str, Any]]) -> Built | str | None:
    """The manifest digest the Job's own pods (exit code 0) reported writing; None if none
    did; why not, if they disagree (more than one digest)."""
    meta = job["metadata"]
    digests: set[str] = set()
    for pod in pods:
        if not _own_pod(pod, job):
            continue
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            done = (status.get("state") or {}).get("terminated") or {}
            if status.get("name") != BUILDER or done.get("exitCode") != 0:
                continue
            try:
                summary = json.loads(done.get("message") or "")
            except ValueError:
                continue
            digest = summary.get("manifestSha256") if isinstance(summary, dict) else None
            if isinstance(digest, str) and not summary.get("cached"):
                digests.add(digest)
    if len(digests) > 1:
        return f"the pods of Job {meta['name']} reported {len(digests)} different manifests"
    if not digests:
        return None
    return Built(provenance.JobRef(meta["namespace"], meta["name"], meta["uid"]),
                 digests.pop())


def signable(key: str, manifest_bytes: bytes | None, report: Built) -> Manifest | str:
    """The manifest to sign, or why the stored one is not the one the Job wrote."""
    if manifest_bytes is None:
        return "no manifest in the store"
    if provenance.sha256(manifest_bytes) != report.manifest_sha256:
        return (f"the stored manifest is not the one Job {report.job.name} wrote (its sha256 "
                f"differs: replaced by another writer)")
    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValueError:
        return "the stored manifest does not parse"
    if manifest.key != key or key_of(manifest.inputs) != key:
        return f"the manifest's inputs do not hash to key {short_key(key)}"
    return manifest

"""Kubernetes manifests generated from a job file: a KubeRay RayJob that trains, and a KubeRay
RayCronJob that scores yesterday's partition every night. Each brings up its own Ray cluster,
sized by the job's scaling section, and deletes it when the job ends.

Owns the manifest shapes only; what runs in the pods is cli.py, in the image of infra/Dockerfile.
A pod's disk goes with the pod, so outputs must be object-store URIs, and credentials come from a
Secret by reference, never from the manifest.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from pathlib import Path

import yaml

from mlc_dist.config import JobConfig, JobConfigError, apply_overrides, load_job, validate_job
from mlc_dist.submit import REPO, entrypoint

#: infra/Dockerfile's WORKDIR; the image carries the project's jobs/ there.
IMAGE_WORKDIR = "/app"
RAY_VERSION = "2.60.0"
#: The user of Ray's images, and so of ours: uid 1000 (`ray`), primary group 100 (`users`).
RAY_UID, RAY_GID = 1000, 100
#: Object-store credentials (AWS_ACCESS_KEY_ID, ...): required, so a pod without them never starts.
STORAGE_SECRET = "mlc-dist-storage"
KINDS = ("rayjob", "cronjob")
#: KubeRay names a RayJob's cluster <rayjob>-<5 chars>, whose services must stay DNS labels.
MAX_RAYJOB_NAME = 47
#: A RayCronJob names each RayJob it creates <raycronjob>-<suffix>; this leaves 11 for it.
MAX_RAYCRONJOB_NAME = 36
#: Logical CPUs a worker pod adds for Ray Data's read/tokenize tasks beside the training worker or
#: scoring actor, which holds its own CPUs throughout (a local cluster gets the same headroom).
DATA_CPUS_PER_WORKER = 1
#: A finished cluster's pods (and GPUs) stay this long for a look at its dashboard and logs.
CLUSTER_TTL_S = 600
#: The cluster must be up (images pulled, GPU nodes added) within this, or the run fails.
STARTUP_DEADLINE_S = 3600
TRAIN_DEADLINE_S = 24 * 3600
#: Under a day: RayCronJob has no concurrencyPolicy, so this is what keeps nights from overlapping.
NIGHTLY_DEADLINE_S = 20 * 3600
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
#: Paths the pods read: an object store, or an absolute path (in the image, or on a volume you add).
READS = {"rayjob": ("data.train", "data.validation", "data.train_labels", "data.validation_labels",
                    "data.label_names_file"),
         "cronjob": ("score.input",)}
#: Paths the pods write: an object store only.
WRITES = {"rayjob": ("run.output_dir",), "cronjob": ("score.output",)}


def _k8s_name(text: str, suffix: str, limit: int) -> str:
    """A DNS-1035 label (KubeRay's rule for these names): a-z, 0-9 and '-', from a letter."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not name[:1].isalpha():
        name = f"mlc-{name}"
    return f"{name[: limit - len(suffix) - 1].rstrip('-')}-{suffix}"


def _labels(job: JobConfig, component: str) -> dict:
    run = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", job.run.name[:63]) or "run"
    return {"app.kubernetes.io/name": "mlc-dist", "app.kubernetes.io/component": component,
            "mlc-dist/run": run}


def _job_in_image(job_path: str) -> str:
    try:
        rel = Path(job_path).resolve().relative_to(REPO).as_posix()
    except ValueError:
        rel = None
    if rel is None or not rel.startswith("jobs/"):
        raise JobConfigError(f"{job_path}: render needs a job file inside the project's jobs/ "
                             f"({REPO / 'jobs'}), the folder the image carries")
    return rel


def _read_job(job_path: str, overrides: list[str]) -> JobConfig:
    """The job with its paths as written: they are read inside the pods, not resolved here."""
    load_job(job_path, overrides)  # the errors every command gives (file, YAML, keys, values)
    tree = yaml.safe_load(Path(job_path).read_text()) or {}
    return validate_job(apply_overrides(tree, list(overrides)), str(job_path))


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _check_paths(kind: str, job: JobConfig) -> None:
    def value(key: str):
        section, name = key.split(".")
        return getattr(getattr(job, section), name)

    for key in WRITES[kind]:
        if not _is_remote(value(key)):
            raise JobConfigError(
                f"{key}: {value(key)!r} is a local path, and a pod's disk is deleted with the pod "
                f"when the job ends; write to the object store: --set {key}=s3://BUCKET/...")
    for key in READS[kind]:
        for path in [value(key)] if isinstance(value(key), str) else value(key) or []:
            if not _is_remote(path) and not os.path.isabs(path):
                raise JobConfigError(
                    f"{key}: {path!r} is relative to the project, whose data the pods do not "
                    f"have (the image carries the code and jobs/); use --set {key}=s3://BUCKET/...")
    if kind == "cronjob" and not (_is_remote(job.score_model) or os.path.isabs(job.score_model)):
        raise JobConfigError(
            f"score.model: {job.score_model!r}: the pods need the model on the object store "
            "(--set score.model=s3://BUCKET/runs/NAME/model, what a training run with an "
            "object-store output_dir exports) or in the image (--set score.model=/models/NAME)")


def _check_schedule(schedule: str) -> None:
    fields = schedule.split()
    if len(fields) != 5:
        raise JobConfigError(f"--schedule {schedule!r}: expected 5 cron fields, e.g. '0 2 * * *'")
    if not (fields[0].isdigit() and fields[1].isdigit()):
        raise JobConfigError(
            f"--schedule {schedule!r}: the nightly job runs at most once a day (one minute and "
            "one hour, e.g. '0 2 * * *'): each run scores yesterday, and RayCronJob cannot keep "
            "two runs from overlapping")


#: What a shell would read as syntax. KubeRay's submitter runs the entrypoint through bash, then
#: `ray job submit` joins the words again unquoted (subprocess.list2cmdline) for the head's sh.
_SHELL_SYNTAX = re.compile(r"[$`\\\"';&|<>()#~\n\t]")


def _check_entrypoint(args: list[str]) -> None:
    for arg in args:
        if _SHELL_SYNTAX.search(arg):
            raise JobConfigError(
                f"{arg!r}: quotes and shell characters ($ ` \\ \" ' ; & | < > ( ) # ~) do not "
                "survive KubeRay's submitter (two shells); put the value in the job file instead")


def _pod(containers: list[dict], **spec) -> dict:
    """A pod template the kubelet will start under runAsNonRoot: its user is numeric."""
    return {"spec": {
        "securityContext": {"runAsNonRoot": True, "runAsUser": RAY_UID, "runAsGroup": RAY_GID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        **spec, "containers": containers}}


def _container(image: str, name: str, resources: dict, storage: bool = True) -> dict:
    out = {"name": name, "image": image}
    if storage:  # Ray nodes: run from the job files' folder, with the object-store credentials
        out["workingDir"] = IMAGE_WORKDIR
        out["env"] = [{"name": "RAY_TRAIN_V2_ENABLED", "value": "1"}]
        out["envFrom"] = [{"secretRef": {"name": STORAGE_SECRET, "optional": False}}]
    out["resources"] = {"requests": dict(resources), "limits": dict(resources)}
    out["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return out


def _ray_cluster(job: JobConfig, image: str, num_workers: int) -> dict:
    """A head that schedules nothing and `num_workers` identical workers, one per worker pod."""
    head = _container(image, "ray-head", {"cpu": "2", "memory": "8Gi"})
    head["ports"] = [{"containerPort": 6379, "name": "gcs"},
                     {"containerPort": 8265, "name": "dashboard"},
                     {"containerPort": 10001, "name": "client"}]
    gpu = job.scaling.use_gpu
    num_cpus = str(math.ceil(job.scaling.cpus_per_worker) + DATA_CPUS_PER_WORKER)
    worker = _container(image, "ray-worker", {"cpu": num_cpus, "memory": "16Gi",
                                              **({"nvidia.com/gpu": "1"} if gpu else {})})
    return {
        "rayVersion": RAY_VERSION,
        "headGroupSpec": {
            # ClusterIP only: dashboard (8265) and GCS (6379) stay inside the cluster.
            "serviceType": "ClusterIP",
            "rayStartParams": {"num-cpus": "0"},  # no training or scoring work on the head
            "template": _pod([head]),
        },
        "workerGroupSpecs": [{
            "groupName": "gpu-workers" if gpu else "cpu-workers",
            "replicas": num_workers, "minReplicas": num_workers, "maxReplicas": num_workers,
            "rayStartParams": {"num-cpus": num_cpus, **({"num-gpus": "1"} if gpu else {})},
            "template": _pod([worker], **({"tolerations": [GPU_TOLERATION]} if gpu else {})),
        }],
    }


def _rayjob_spec(job: JobConfig, image: str, command: str, deadline_s: int,
                 num_workers: int) -> dict:
    return {
        "entrypoint": command,
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": CLUSTER_TTL_S,
        "preRunningDeadlineSeconds": STARTUP_DEADLINE_S,
        "activeDeadlineSeconds": deadline_s,
        "rayClusterSpec": _ray_cluster(job, image, num_workers),
        # KubeRay fills in the command (`ray job submit ... -- <entrypoint>`) and the head's
        # address; given here so the submitter, too, runs as the non-root user.
        "submitterPodTemplate": _pod(
            [_container(image, "ray-job-submitter", {"cpu": "500m", "memory": "1Gi"}, False)],
            restartPolicy="Never"),
    }


def rayjob(job: JobConfig, job_path: str, image: str, overrides: list[str]) -> dict:
    """A RayJob that brings up a cluster sized by scaling.*, trains, and tears it down."""
    command = entrypoint("train", _job_in_image(job_path), overrides)
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        "metadata": {"name": _k8s_name(job.run.name, "train", MAX_RAYJOB_NAME),
                     "labels": _labels(job, "train")},
        "spec": _rayjob_spec(job, image, command, TRAIN_DEADLINE_S, job.scaling.num_workers),
    }


def raycronjob(job: JobConfig, job_path: str, image: str, overrides: list[str],
               schedule: str) -> dict:
    """A RayCronJob: each night a RayJob with its own cluster (score.num_actors workers) scores
    the `{date}` partition of yesterday, in UTC, and the cluster goes when it is done."""
    # The word, not a date: the pod resolves it when it runs (scoring/nightly.py).
    command = entrypoint("score", _job_in_image(job_path), overrides, date="yesterday")
    return {
        "apiVersion": "ray.io/v1", "kind": "RayCronJob",
        "metadata": {"name": _k8s_name(job.run.name, "nightly", MAX_RAYCRONJOB_NAME),
                     "labels": _labels(job, "nightly-score")},
        "spec": {
            "schedule": schedule,
            "timeZone": "Etc/UTC",  # the schedule's clock is the one `yesterday` is read on
            "jobTemplate": _rayjob_spec(job, image, command, NIGHTLY_DEADLINE_S,
                                        job.score.num_actors or 1),
        },
    }


def render(kind: str, job_path: str, image: str, overrides: list[str] | None = None,
           schedule: str = "0 2 * * *") -> str:
    """The manifest as YAML, headed by the command that renders it."""
    overrides = list(overrides or [])
    if kind not in KINDS:
        raise JobConfigError(f"{kind!r}: expected one of {', '.join(KINDS)}")
    job = _read_job(job_path, overrides)
    in_image = _job_in_image(job_path)
    _check_paths(kind, job)
    _check_entrypoint([in_image, *overrides])
    args = ["mlc-dist", "render", kind, in_image, "--image", image]
    if kind == "rayjob":
        manifest = rayjob(job, job_path, image, overrides)
    else:
        _check_schedule(schedule)
        manifest = raycronjob(job, job_path, image, overrides, schedule)
        args += ["--schedule", schedule]
    for item in overrides:
        args += ["--set", item]
    header = f"# Rendered from the job file; rerun rather than edit:\n# {shlex.join(args)}\n"
    return header + yaml.safe_dump(manifest, sort_keys=False, width=4096)

"""Kubernetes manifests generated from a job file: a KubeRay RayJob for training and a CronJob
that submits nightly scoring to a running RayCluster.

Owns the manifest shapes only; sizes come from the job's scaling section so they cannot drift.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from mlc_dist.config import JobConfig, load_job
from mlc_dist.submit import REPO, entrypoint

#: The project's folder inside the image (infra/Dockerfile's WORKDIR).
IMAGE_WORKDIR = "/app"
RAY_VERSION = "2.60.0"
#: The RayCluster of cluster/kuberay/raycluster.yaml; KubeRay names its head service <name>-head-svc.
DEFAULT_RAY_ADDRESS = "http://mlc-dist-head-svc:8265"
#: Object-store credentials come from this Secret when it exists; never written into manifests.
STORAGE_SECRET = "mlc-dist-storage"
KINDS = ("rayjob", "cronjob")


def _k8s_name(text: str, suffix: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[: 52 - len(suffix)]
    return f"{name}-{suffix}".strip("-")


def _job_in_image(job_path: str) -> str:
    path = Path(job_path).resolve()
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        raise ValueError(f"{job_path}: render needs a job file inside the project ({REPO}), "
                         "because the image carries the project and its jobs/") from None


def _container(image: str, name: str, resources: dict, command: list[str] | None = None) -> dict:
    out = {"name": name, "image": image, "workingDir": IMAGE_WORKDIR,
           "env": [{"name": "RAY_TRAIN_V2_ENABLED", "value": "1"}],
           "envFrom": [{"secretRef": {"name": STORAGE_SECRET, "optional": True}}],
           "resources": {"requests": resources, "limits": resources},
           "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False}}
    if command:
        out["command"] = command
    return out


def worker_resources(job: JobConfig) -> dict:
    res = {"cpu": str(job.scaling.cpus_per_worker), "memory": "16Gi"}
    if job.scaling.use_gpu:
        res["nvidia.com/gpu"] = "1"
    return res


def rayjob(job: JobConfig, job_path: str, image: str, overrides: list[str]) -> dict:
    """A RayJob that brings up a cluster sized by scaling.*, trains, and tears it down."""
    workers = job.scaling.num_workers
    head = _container(image, "ray-head", {"cpu": "2", "memory": "8Gi"})
    head["ports"] = [{"containerPort": 6379, "name": "gcs"},
                     {"containerPort": 8265, "name": "dashboard"},
                     {"containerPort": 10001, "name": "client"}]
    worker = _container(image, "ray-worker", worker_resources(job))
    worker_start = {"num-cpus": str(int(job.scaling.cpus_per_worker + 0.999))}
    if job.scaling.use_gpu:
        worker_start["num-gpus"] = "1"
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        "metadata": {"name": _k8s_name(job.run.name, "train"),
                     "labels": {"app.kubernetes.io/name": "mlc-dist", "mlc-dist/run": job.run.name}},
        "spec": {
            "entrypoint": entrypoint("train", _job_in_image(job_path), overrides),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "activeDeadlineSeconds": 24 * 3600,
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "headGroupSpec": {
                    # ClusterIP only: dashboard (8265) and GCS (6379) stay inside the cluster.
                    "serviceType": "ClusterIP",
                    "rayStartParams": {"num-cpus": "0"},  # no training work on the head
                    "template": {"spec": {"containers": [head]}},
                },
                "workerGroupSpecs": [{
                    "groupName": "gpu-workers" if job.scaling.use_gpu else "cpu-workers",
                    "replicas": workers, "minReplicas": workers, "maxReplicas": workers,
                    "rayStartParams": worker_start,
                    "template": {"spec": {"containers": [worker]}},
                }],
            },
        },
    }


def cronjob(job: JobConfig, job_path: str, image: str, overrides: list[str], schedule: str,
            address: str) -> dict:
    """A CronJob whose pod submits this job's scoring to a running RayCluster and waits for it."""
    command = ["python", "-m", "mlc_dist.cli", "submit", _job_in_image(job_path),
               "--command", "score", "--address", address, "--follow"]
    for item in overrides:
        command += ["--set", item]
    submitter = _container(image, "submit-scoring", {"cpu": "500m", "memory": "1Gi"}, command)
    return {
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": _k8s_name(job.run.name, "nightly-score"),
                     "labels": {"app.kubernetes.io/name": "mlc-dist", "mlc-dist/run": job.run.name}},
        "spec": {
            "schedule": schedule,
            "concurrencyPolicy": "Forbid",  # a slow night never overlaps the next one
            "startingDeadlineSeconds": 3600,
            "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 5,
            "jobTemplate": {"spec": {"backoffLimit": 1, "template": {"spec": {
                "restartPolicy": "Never", "containers": [submitter]}}}},
        },
    }


def render(kind: str, job_path: str, image: str, overrides: list[str] | None = None,
           schedule: str = "0 2 * * *", address: str = DEFAULT_RAY_ADDRESS) -> str:
    overrides = list(overrides or [])
    job = load_job(job_path, overrides)
    if kind == "rayjob":
        manifest = rayjob(job, job_path, image, overrides)
    elif kind == "cronjob":
        if len(schedule.split()) != 5:
            raise ValueError(f"--schedule {schedule!r}: expected 5 cron fields, e.g. '0 2 * * *'")
        manifest = cronjob(job, job_path, image, overrides, schedule, address)
    else:
        raise ValueError(f"{kind!r}: expected one of {', '.join(KINDS)}")
    return yaml.safe_dump(manifest, sort_keys=False)

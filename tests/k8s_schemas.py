"""Kubernetes manifests checked against the schemas the API server applies: KubeRay's CRDs (read
from shared/k8s/, never copied here) and the core API through kubernetes-validate, both with
unknown fields as errors; plus the kubelet's runAsNonRoot rule, which no schema encodes.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_K8S_ENV = "MLC_DIST_SHARED_K8S"
#: Core schemas of this Kubernetes minor (kubernetes-validate ships 1.25 to 1.37).
K8S_VERSION = "1.33"
#: KubeRay names a RayJob's RayCluster <rayjob>-<5 chars>, whose services must stay DNS labels.
MAX_RAYJOB_NAME = 47
#: A RayCronJob names each RayJob it creates <raycronjob>-<5 chars>.
MAX_RAYCRONJOB_NAME = MAX_RAYJOB_NAME - 6


def shared_k8s() -> Path:
    """shared/k8s next to the repository (as CI lays it out), or $MLC_DIST_SHARED_K8S."""
    return Path(os.environ.get(SHARED_K8S_ENV) or REPO.parent / "shared" / "k8s")


def close_schema(schema: dict) -> dict:
    """A copy in which an object schema that lists `properties` accepts no others.

    CRD schemas leave `additionalProperties` unset, which JSON Schema reads as "anything goes";
    the API server instead prunes unknown fields (kubectl --validate=strict refuses them). Objects
    marked x-kubernetes-preserve-unknown-fields, or with their own additionalProperties (maps),
    stay open.
    """
    def close(node):
        if not isinstance(node, dict):
            return
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for child in (node.get("properties") or {}).values():
            close(child)
        for key in ("items", "additionalProperties", "not"):
            close(node.get(key))
        for key in ("allOf", "anyOf", "oneOf"):
            for child in node.get(key) or []:
                close(child)

    out = copy.deepcopy(schema)
    close(out)
    return out


@functools.cache
def _crds() -> list[dict]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 0.5 s instead of 5 s
    return [doc for path in sorted((shared_k8s() / "kuberay-crds").glob("*.yaml"))
            for doc in yaml.load_all(path.read_text(), Loader=loader)
            if doc and doc.get("kind") == "CustomResourceDefinition"]


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict:
    """The closed openAPIV3Schema of `kind` at `api_version` (e.g. ray.io/v1) from the CRDs."""
    group, _, version = api_version.partition("/")
    for crd in _crds():
        spec = crd["spec"]
        if spec["group"] == group and spec["names"]["kind"] == kind:
            for entry in spec["versions"]:
                if entry["name"] == version and entry.get("served", True):
                    return close_schema(entry["schema"]["openAPIV3Schema"])
    raise LookupError(f"no CRD for {kind} {api_version} in {shared_k8s() / 'kuberay-crds'}")


def _core(manifest: dict) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        raise AssertionError(f"{manifest['kind']}: {err}") from None


def pod_templates(manifest: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod template) for every pod a KubeRay object or a core workload will start."""
    spec = manifest.get("spec", {})
    if manifest["kind"] == "RayCronJob":
        yield from pod_templates({"kind": "RayJob", "spec": spec.get("jobTemplate", {})})
        return
    if manifest["kind"] == "RayJob":
        if "submitterPodTemplate" in spec:
            yield "submitterPodTemplate", spec["submitterPodTemplate"]
        spec = spec.get("rayClusterSpec", {})
    elif manifest["kind"] == "CronJob":
        yield "jobTemplate", spec["jobTemplate"]["spec"]["template"]
        return
    elif manifest["kind"] != "RayCluster":
        return
    yield "headGroupSpec", spec["headGroupSpec"]["template"]
    for group in spec.get("workerGroupSpecs", []):
        yield f"workerGroupSpecs[{group['groupName']}]", group["template"]


def security_errors(pod_spec: dict) -> list[str]:
    """The kubelet's runAsNonRoot rule and our own floor, per container.

    With runAsNonRoot the kubelet must prove the user is not root: from runAsUser, else from the
    image's USER, which it cannot when that is a name (`USER ray`): the pod never starts. So every
    container here runs as non-root with a numeric, non-zero runAsUser set in the manifest, and
    cannot gain privileges.
    """
    errors = []
    pod = pod_spec.get("securityContext") or {}
    for c in [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]:
        ctx = {**pod, **(c.get("securityContext") or {})}  # the container's own settings win
        if ctx.get("runAsNonRoot") is not True:
            errors.append(f"{c['name']}: runAsNonRoot is not true")
        user = ctx.get("runAsUser")
        if not isinstance(user, int) or isinstance(user, bool) or user <= 0:
            errors.append(f"{c['name']}: runAsNonRoot needs a numeric non-root runAsUser "
                          f"(got {user!r}); the kubelet cannot verify a named image user")
        if ctx.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{c['name']}: allowPrivilegeEscalation is not false")
    return errors


def validate(manifest: dict) -> None:
    """Raise AssertionError naming what the API server or the kubelet would refuse."""
    api_version, kind = manifest["apiVersion"], manifest["kind"]
    if api_version.startswith("ray.io/"):
        try:
            jsonschema.Draft4Validator(crd_schema(api_version, kind)).validate(manifest)
        except jsonschema.ValidationError as err:
            where = "/".join(str(p) for p in err.absolute_path)
            raise AssertionError(f"{kind} {where}: {err.message}") from None
        # The API server checks a custom resource's metadata as ObjectMeta; so does this.
        _core({"apiVersion": "v1", "kind": "ConfigMap", "metadata": manifest["metadata"]})
        limit = {"RayJob": MAX_RAYJOB_NAME, "RayCronJob": MAX_RAYCRONJOB_NAME}.get(kind)
        name = manifest["metadata"].get("name", "")
        assert limit is None or len(name) <= limit, f"{kind} name {name!r} is over {limit}"
    else:
        _core(manifest)
    for where, template in pod_templates(manifest):
        # Each pod template against the core PodTemplate schema too (strict).
        _core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
               "template": template})
        errors = security_errors(template.get("spec", {}))
        assert not errors, f"{kind} {where}: " + "; ".join(errors)


def validate_text(text: str) -> list[dict]:
    """Every document of a YAML stream validated; returns them."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert docs, "no manifest in the text"
    for doc in docs:
        validate(doc)
    return docs

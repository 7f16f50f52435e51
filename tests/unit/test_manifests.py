"""Manifests that Kubernetes would accept and start: rendered and checked-in ones pass KubeRay's
CRD schemas and the core API with unknown fields as errors, and run as a numeric non-root user."""

from __future__ import annotations

import shlex

import pytest
import yaml

from mlc_dist.render import KINDS, RAY_GID, RAY_UID, render
from tests import k8s_schemas
from tests.k8s_schemas import REPO, close_schema, security_errors, validate, validate_text

QUICKSTART = str(REPO / "jobs" / "quickstart.yaml")
NIGHTLY = str(REPO / "jobs" / "nightly_score.yaml")
#: What a real render passes: every path the pods read or write is one they can reach.
REMOTE = {
    "rayjob": ["run.output_dir=s3://bucket/runs", "data.train=s3://bucket/demo/train.csv"],
    "cronjob": ["score.input=s3://bucket/drops/date={date}/*.parquet",
                "score.output=s3://bucket/scores/date={date}", "score.model=/models/goemotions"],
}
CHECKED_IN = sorted([*(REPO / "infra").glob("*.yaml"),
                     *(REPO / "cluster" / "kuberay").glob("*.yaml")])

needs_schemas = pytest.mark.skipif(
    not (k8s_schemas.shared_k8s() / "kuberay-crds").is_dir(),
    reason=f"no KubeRay CRDs at {k8s_schemas.shared_k8s()} (set {k8s_schemas.SHARED_K8S_ENV})")


@pytest.fixture(autouse=True)
def _kubernetes_validate():
    pytest.importorskip("kubernetes_validate")


@needs_schemas
@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
@pytest.mark.parametrize("job", [QUICKSTART, NIGHTLY], ids=["quickstart", "nightly_score"])
@pytest.mark.parametrize("kind", KINDS)
def test_rendered_manifests_pass_the_schemas(kind, job, gpu):
    text = render(kind, job, "reg.example/mlc-dist:1.0", [*REMOTE[kind], f"scaling.use_gpu={gpu}"])
    [manifest] = validate_text(text)
    assert manifest["kind"] == {"rayjob": "RayJob", "cronjob": "RayCronJob"}[kind]


@needs_schemas
@pytest.mark.parametrize("path", CHECKED_IN, ids=lambda p: str(p.relative_to(REPO)))
def test_checked_in_manifests_pass_the_schemas(path):
    validate_text(path.read_text())


@pytest.mark.parametrize("path", [p for p in CHECKED_IN if p.parent.name == "infra"],
                         ids=lambda p: p.name)
def test_checked_in_renders_are_what_their_command_prints(path, monkeypatch):
    """infra/*.yaml are examples of `mlc-dist render`; each names its command and is its output."""
    from typer.testing import CliRunner

    from mlc_dist.cli import app

    text = path.read_text()
    command = next((line[2:] for line in text.splitlines()[:3]
                    if line.startswith("# mlc-dist render ")), None)
    assert command, f"{path.name}: no '# mlc-dist render ...' line at the top"
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, shlex.split(command)[1:])
    assert result.exit_code == 0, result.output
    assert result.stdout == text, f"{path.name} drifted from its command; regenerate it"


def test_closing_a_crd_schema_makes_unknown_fields_errors():
    import jsonschema

    schema = close_schema({"type": "object", "properties": {
        "spec": {"type": "object", "properties": {"a": {"type": "integer"}}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"b": {"type": "string"}}},
        "items": {"type": "array", "items": {"type": "object", "properties": {"c": {}}}}}})
    ok = {"spec": {"a": 1}, "labels": {"any": "x"}, "raw": {"b": "x", "other": 1},
          "items": [{"c": 1}]}
    jsonschema.Draft4Validator(schema).validate(ok)
    for bad in ({"spec": {"a": 1, "typo": 2}}, {"items": [{"c": 1, "d": 2}]}, {"extra": 1}):
        with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
            jsonschema.Draft4Validator(schema).validate(bad)
    # The CRD schema as shipped takes them all: "unknown" is only an error once closed.
    original = {k: v for k, v in schema.items() if k != "additionalProperties"}
    original["properties"] = {**schema["properties"], "spec": {"type": "object", "properties": {
        "a": {"type": "integer"}}}}
    jsonschema.Draft4Validator(original).validate({"spec": {"a": 1, "typo": 2}, "extra": 1})


def test_run_as_non_root_needs_a_numeric_user():
    container = {"name": "c", "securityContext": {"allowPrivilegeEscalation": False}}
    named = {"securityContext": {"runAsNonRoot": True}, "containers": [container]}
    assert any("numeric non-root runAsUser" in e for e in security_errors(named))
    root = {"securityContext": {"runAsNonRoot": True, "runAsUser": 0}, "containers": [container]}
    assert security_errors(root)
    ok = {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000}, "containers": [container]}
    assert security_errors(ok) == []


@needs_schemas
def test_validation_catches_an_unknown_field_and_a_bad_type():
    manifest = yaml.safe_load(render("rayjob", QUICKSTART, "img:1", REMOTE["rayjob"]))
    validate(manifest)
    manifest["spec"]["activeDeadlineSecond"] = 60  # typo: the API server would drop it
    with pytest.raises(AssertionError, match="activeDeadlineSecond"):
        validate(manifest)
    manifest = yaml.safe_load(render("rayjob", QUICKSTART, "img:1", REMOTE["rayjob"]))
    manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "2"
    with pytest.raises(AssertionError, match="replicas"):
        validate(manifest)
    manifest = yaml.safe_load(render("rayjob", QUICKSTART, "img:1", REMOTE["rayjob"]))
    head = manifest["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(AssertionError, match="imagePullPolicyy"):
        validate(manifest)


def test_every_pod_runs_as_the_images_numeric_user():
    for kind in KINDS:
        manifest = yaml.safe_load(render(kind, NIGHTLY, "img:1", REMOTE[kind]))
        for where, template in k8s_schemas.pod_templates(manifest):
            ctx = template["spec"]["securityContext"]
            assert (ctx["runAsUser"], ctx["runAsGroup"], ctx["runAsNonRoot"]) == \
                (RAY_UID, RAY_GID, True), (kind, where)
            assert security_errors(template["spec"]) == [], (kind, where)

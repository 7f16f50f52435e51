"""score.backend onnx / onnx-int8: the exported graphs, their cache and digests, the Scorer on
them, and the int8 parity gate; real torch.onnx exports and ONNX Runtime sessions, no Ray."""

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlc_dist import storage
from mlc_dist.artifacts import read_meta
from mlc_dist.config import JobConfigError, validate_job
from mlc_dist.scoring import Scorer
from mlc_dist.scoring import onnx_backend, parity
from .onnx_models import (SEVERITY, batch_for, export_kind, onnx_cache,  # noqa: F401 - fixtures
                          scores, tiny_bert)

INT8_TOLERANCE = 0.1  # max abs difference of int8 from fp32 scores on the tiny 32-wide model


@pytest.fixture(scope="module")
def exported(tiny_bert, tmp_path_factory):
    """hf encoder + mean pooling + multi_binary head, scores spread over (0, 1)."""
    return export_kind(tmp_path_factory.mktemp("export"), tiny_bert, "hf", "multi_binary", "mean")


def test_onnx_scores_equal_torch_fp32(exported):
    batch = batch_for(exported)
    ref = Scorer(exported, ["id"])(batch)
    got = Scorer(exported, ["id"], batch_size=5, backend="onnx")(batch)
    assert got["id"].tolist() == ref["id"].tolist() == [f"r{i}" for i in range(24)]
    # The comparison means something only if the scores are spread out, not all near 0.5.
    assert scores(ref).max() - scores(ref).min() > 0.85 and scores(ref).std() > 0.2
    np.testing.assert_allclose(scores(got), scores(ref), atol=1e-5, rtol=0)
    assert all((got[k] == ref[k]).all() for k in ref if k.startswith("pred_"))


# hf + multi_binary + mean pooling is `exported`; multi_category differs from linear in the
# output schema only (torch-side), so it rides on the fast MLP.
@pytest.mark.parametrize("kind,head,pooling", [("hf", "linear", "cls"),
                                               ("encoder", "linear", "cls"),
                                               ("mlp", "multi_category", "cls")])
def test_every_kind_and_head_scores_equal_on_onnx(kind, head, pooling, tiny_bert, tmp_path):
    exp = export_kind(tmp_path / "export", tiny_bert, kind, head, pooling,
                      **({"labels": SEVERITY} if head == "multi_category" else {}))
    batch = batch_for(exp)
    ref, got = Scorer(exp, ["id"])(batch), Scorer(exp, ["id"], backend="onnx")(batch)
    assert list(got) == list(ref)
    assert scores(ref).std() > 0.15
    np.testing.assert_allclose(scores(got), scores(ref), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["distilbert", "roberta", "xlnet", "deberta-v2"])
def test_every_family_exports_and_scores_equal_on_onnx(family, tmp_path):
    """BERT is above; each other family we list exports too (XLNet pads left and is classified
    from its last position, which the graph must keep on shapes it was not traced on)."""
    from ..families import build_family

    base = build_family(family, tmp_path / "base", initializer_range=0.2)  # scores vary
    exp = export_kind(tmp_path / "export", base)
    batch = batch_for(exp)
    ref, got = Scorer(exp, ["id"])(batch), Scorer(exp, ["id"], backend="onnx")(batch)
    assert scores(ref).std() > 0.15
    np.testing.assert_allclose(scores(got), scores(ref), atol=1e-5, rtol=0)


def test_graphs_are_cached_by_content_outside_the_export(exported):
    listing = storage.content_listing(exported)
    fp32 = onnx_backend.graph_path(exported, "onnx")
    int8 = onnx_backend.graph_path(exported, "onnx-int8")
    assert os.path.dirname(fp32) == os.path.dirname(int8) == onnx_backend.cache_dir(exported)
    assert fp32.startswith(os.path.join(storage.cache_root(), "onnx"))
    assert storage.content_listing(exported) == listing  # nothing written into the export
    stamp = os.stat(fp32).st_mtime_ns
    assert onnx_backend.graph_path(exported, "onnx") == fp32
    assert os.stat(fp32).st_mtime_ns == stamp  # made once
    with open(int8, "rb") as f:
        assert onnx_backend.onnx_digest(exported, "onnx-int8") == hashlib.sha256(
            f.read()).hexdigest()
    assert onnx_backend.onnx_digest(exported, "onnx") != onnx_backend.onnx_digest(
        exported, "onnx-int8")
    assert onnx_backend.onnx_digest(exported, "torch") == ""


def test_int8_scores_stay_close_to_fp32(exported):
    batch = batch_for(exported)
    ref = scores(Scorer(exported, ["id"])(batch))
    got = scores(Scorer(exported, ["id"], backend="onnx-int8")(batch))
    diff = np.abs(got - ref)
    assert 0 < diff.max() <= INT8_TOLERANCE  # quantized (not fp32 again), and close


def _sample(tmp_path, rows: int = 200) -> str:
    from .onnx_models import TEXTS

    texts = [f"{TEXTS[i % len(TEXTS)]} {' again' * (i % 7)}" for i in range(rows)]
    path = str(tmp_path / "sample.parquet")
    pq.write_table(pa.table({"text": texts}), path)
    return path


def test_gate_figures_are_int8_against_fp32_on_the_sample(exported, tmp_path):
    sample = _sample(tmp_path)
    figures = parity.check_int8(exported, sample)
    batch, _ = parity.read_sample(sample, exported, read_meta(exported))
    ref = Scorer(exported, [])(batch)
    got = Scorer(exported, [], backend="onnx-int8")(batch)
    assert figures["rows"] == 200 and figures["auc_against"] == "fp32 decisions"
    assert set(figures["per_label"]) == {"toxic", "insult", "threat"}
    for name, f in figures["per_label"].items():
        assert f["flip_rate"] == round(float((ref[f"pred_{name}"] != got[f"pred_{name}"]).mean()),
                                       6)
    assert figures["max_abs_diff_vs_fp32"] == pytest.approx(float(np.abs(scores(ref) - scores(
        got)).max()))
    assert 0 < figures["max_abs_diff_vs_fp32"] <= INT8_TOLERANCE
    assert figures["int8_graph_sha256"] == onnx_backend.onnx_digest(exported, "onnx-int8")
    assert figures["passed"] == (figures["max_label_flip_rate"] <= parity.MAX_FLIP_RATE and
                                 (figures["max_auc_drop"] or 0) <= parity.MAX_AUC_DROP)
    if figures["passed"]:
        assert parity.gate(figures, exported) is figures
    else:
        with pytest.raises(parity.ParityError):
            parity.gate(figures, exported)


def _damage_int8_scales(path: str) -> None:
    """Triple every per-channel weight scale: what a broken quantizer writes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    scales = [t for t in model.graph.initializer if t.name.endswith("_scale")
              and numpy_helper.to_array(t).size > 1]  # per-channel weight scales
    for t in scales:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 3, t.name))
    onnx.save(model, path)


def test_gate_refuses_a_damaged_quantization(exported, tmp_path):
    import shutil

    from mlc_dist.artifacts import write_meta

    damaged, sample = str(tmp_path / "export"), _sample(tmp_path)
    shutil.copytree(exported, damaged)
    # Thresholds at each label's median fp32 score on the sample, as tuned thresholds sit among
    # the scores: decisions of both kinds, so flips and AUC are measured. A new content hash too.
    meta = read_meta(damaged)
    batch, _ = parity.read_sample(sample, damaged, meta)
    meta.thresholds = np.median(scores(Scorer(damaged, [])(batch)), axis=0).tolist()
    write_meta(damaged, meta)
    # The same weights: reuse the fp32 graph rather than export it again (test time).
    os.makedirs(onnx_backend.cache_dir(damaged))
    shutil.copy(onnx_backend.graph_path(exported, "onnx"), onnx_backend.cache_dir(damaged))
    healthy = parity.check_int8(damaged, sample)
    _damage_int8_scales(onnx_backend.graph_path(damaged, "onnx-int8"))
    figures = parity.check_int8(damaged, sample)
    assert figures["int8_graph_sha256"] != healthy["int8_graph_sha256"]
    assert figures["max_label_flip_rate"] > max(parity.MAX_FLIP_RATE,
                                                healthy["max_label_flip_rate"]), (healthy, figures)
    assert not figures["passed"]
    with pytest.raises(parity.ParityError, match=r"onnx-int8 refused .* decisions flipped"):
        parity.gate(figures, damaged)


def test_compare_counts_flips_and_auc_drops_per_label():
    from mlc_dist.labels import LabelSpace
    from mlc_dist.models.outputs import OutputSchema

    schema = OutputSchema(LabelSpace.from_names(["a", "b"]))
    y = np.array([0, 0, 1, 1] * 50)
    ref_scores = np.where(y == 1, 0.8, 0.2).astype(np.float32)
    got_b = ref_scores.copy()
    got_b[:2] = 0.9  # two negatives now score above every positive: 2 of 200 flip
    ref = {"score_a": ref_scores, "score_b": ref_scores, "pred_a": (ref_scores >= .5),
           "pred_b": (ref_scores >= .5)}
    got = {"score_a": ref_scores, "score_b": got_b, "pred_a": (ref_scores >= .5),
           "pred_b": (got_b >= .5)}
    figures = parity.compare(schema, ref, got, {"a": y, "b": y})
    assert figures["per_label"]["a"] == {"flip_rate": 0.0, "auc_fp32": 1.0, "auc_int8": 1.0,
                                         "auc_drop": 0.0}
    assert figures["per_label"]["b"]["flip_rate"] == 0.01
    # 2 of 100 negatives outrank all 100 positives: AUC 1 - 2*100/(100*100) = 0.98.
    assert figures["per_label"]["b"]["auc_drop"] == pytest.approx(0.02)
    assert figures["decision_flip_rate"] == 0.005 and figures["max_abs_diff_vs_fp32"] == \
        pytest.approx(0.7)
    assert not figures["passed"]


def test_backend_keys_are_checked_at_load():
    job = {"run": {"name": "x"}, "score": {"backend": "onnx"}}
    assert validate_job(job).score.backend == "onnx"
    with pytest.raises(JobConfigError, match="onnx-int8 needs score.parity_sample"):
        validate_job({"run": {"name": "x"}, "score": {"backend": "onnx-int8"}})
    with pytest.raises(JobConfigError, match="runs ONNX Runtime on CPU"):
        validate_job({**job, "scaling": {"use_gpu": True}})


def test_bench_backend_figures_come_from_the_real_outputs(exported):
    from mlc_dist.bench_backends import backend_figures
    from mlc_dist.bench_score import run_bare
    from .onnx_models import TEXTS

    texts = [TEXTS[i % len(TEXTS)] * (1 + i % 3) for i in range(40)]
    bare_s, bare = run_bare(exported, texts, 8)
    # Batches of 8 as the bare loop: dynamic int8 scales activations per batch, so a row's
    # int8 score depends on its batch-mates (fp32 scores do not).
    int8 = scores(Scorer(exported, [], batch_size=8, backend="onnx-int8")(
        _tokens(exported, texts)))
    figures = backend_figures(exported, texts, 8, None, bare_s, bare, "onnx-int8", 1.0, int8)
    for key in ("int8_rows_per_s", "ratio_vs_bare_fp32", "max_abs_diff_vs_fp32",
                "decision_flip_rate", "max_auc_drop", "onnx_rows_per_s", "torch_int8_rows_per_s"):
        assert key in figures, key
    assert figures["max_abs_diff_vs_fp32"] == pytest.approx(float(np.abs(int8 - bare).max()))
    assert figures["decision_flip_rate"] == pytest.approx(
        float(((int8 >= 0.5) != (bare >= 0.5)).mean()), abs=1e-6)
    # The bare int8 loop runs the same graph on the same rows as the Scorer: the same scores.
    assert figures["int8_max_abs_diff_vs_fp32"] == pytest.approx(figures["max_abs_diff_vs_fp32"],
                                                                 abs=1e-6)
    assert 0 < figures["int8_max_abs_diff_vs_fp32"] <= INT8_TOLERANCE
    assert figures["onnx_max_abs_diff_vs_fp32"] <= 1e-5 and figures["auc_against"] == \
        "fp32 decisions"
    assert figures["ratio_vs_bare_fp32"] == round(bare_s / 1.0, 3)


def _tokens(model_dir, texts):
    from mlc_dist import data

    return data.Tokenize(model_dir, 64, keep=[])({"text": np.array(texts)})


def test_auto_backend_scores_on_the_onnx_graph_on_cpu_in_fp32(exported):
    """score.backend unset is auto: a CPU job in fp32 scores on the export's graph (made now);
    a GPU job, or another precision, on torch."""
    cpu = validate_job({"run": {"name": "x"}})
    assert cpu.score.backend == "auto"
    resolved = parity.resolve_backend(cpu, exported)
    assert resolved.score.backend == "onnx" and cpu.score.backend == "auto"  # a copy
    assert os.path.isfile(os.path.join(onnx_backend.cache_dir(exported), "model.onnx"))
    assert parity.prepare_backend(resolved, exported)["backend"] == "onnx"
    for keys in ({"scaling": {"use_gpu": True}}, {"score": {"precision": "bf16"}}):
        job = validate_job({"run": {"name": "x"}, **keys})
        assert parity.resolve_backend(job, exported).score.backend == "torch"
    explicit = validate_job({"run": {"name": "x"}, "score": {"backend": "torch"}})
    assert parity.resolve_backend(explicit, exported) is explicit


def test_auto_backend_falls_back_to_torch_when_the_model_does_not_export(
        tiny_bert, tmp_path, monkeypatch, caplog):
    """A model neither exporter takes: auto scores on torch and says why; onnx is refused."""
    def fail(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::frobnicate")

    monkeypatch.setattr(onnx_backend, "_export_torchscript", fail)
    monkeypatch.setattr(onnx_backend, "_export_dynamo", fail)
    # A cache of its own: the module's may hold this export's graph from an earlier test.
    monkeypatch.setenv("MLC_DIST_CACHE", str(tmp_path / "cache"))
    model_dir = export_kind(tmp_path, tiny_bert, "hf", "linear", "cls")
    job = validate_job({"run": {"name": "x"}})
    with caplog.at_level("WARNING", logger="mlc_dist.scoring.parity"):
        assert parity.resolve_backend(job, model_dir).score.backend == "torch"
    assert "scoring with torch" in caplog.text and "aten::frobnicate" in caplog.text
    onnx_job = validate_job({"run": {"name": "x"}, "score": {"backend": "onnx"}})
    with pytest.raises(onnx_backend.OnnxBackendError, match="does not export to ONNX"):
        parity.prepare_backend(onnx_job, model_dir)


def test_scorer_refuses_a_graph_other_than_the_one_the_job_identified(exported):
    """Actors load the graph of their own node's cache; one that is not the graph in the job's
    model id (another torch or onnxruntime on that node) is refused, naming both digests."""
    batch = batch_for(exported)
    digest = onnx_backend.onnx_digest(exported, "onnx")
    ref = Scorer(exported, ["id"], backend="onnx")(batch)
    got = Scorer(exported, ["id"], backend="onnx", graph_digest=digest)(batch)
    np.testing.assert_array_equal(scores(got), scores(ref))
    other = onnx_backend.onnx_digest(exported, "onnx-int8")
    with pytest.raises(onnx_backend.OnnxBackendError,
                       match=f"sha256 {digest[:16]}.* not the one this job identified "
                             f"\\({other[:16]}\\)"):
        Scorer(exported, ["id"], backend="onnx", graph_digest=other)

"""score.backend onnx / onnx-int8: an export's ONNX graph (torch.onnx.export, dynamo exporter)
and its int8 form (ONNX Runtime dynamic quantization), cached per export, and the ORT session
the Scorer runs. Owns the graph files and their digests; the parity gate is parity.py's.

The cache lives at storage.cache_root()/onnx/<key>/, never inside the export: the key hashes the
export's content listing with the recipe (opset, torch and onnxruntime versions), so a new
export or a new recipe gets new files, and files are only ever created by an atomic rename.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import uuid

import numpy as np
import torch

from mlc_dist import data, storage
from mlc_dist.config import JobConfigError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
OPSET = 20
#: The TorchScript exporter's newest opset.
OPSET_TS = 17
#: Bump when the export or quantization recipe changes: a new recipe gets new cache files.
RECIPE_VERSION = 3
#: An export whose ONNX graph differs from torch by more than this is refused.
EXPORT_TOLERANCE = 1e-4
#: Quantized ops: the weight matmuls (MatMul/Gemm). Embedding lookups (Gather) stay fp32: they
#: cost nothing at runtime and quantizing them only adds error.
INT8_OP_TYPES = ["MatMul", "Gemm"]


class OnnxBackendError(JobConfigError):
    """An export that cannot run on an ONNX backend; the message says why and what to use."""


def _recipe() -> bytes:
    import onnxruntime

    return (f"recipe{RECIPE_VERSION} opset{OPSET} torch{torch.__version__} "
            f"onnxruntime{onnxruntime.__version__}").encode()


def cache_dir(model_dir: str) -> str:
    """This machine's ONNX folder for an export (local or URI): keyed by content and recipe."""
    local = storage.local_copy(model_dir)
    listing_path = os.path.join(local, storage.CONTENT_FILE)
    if os.path.isfile(listing_path):
        with open(listing_path, "rb") as f:
            listing = f.read()
    else:  # a folder not written by our export: hash what is there now
        listing = storage.content_listing(local).encode()
    key = hashlib.sha256(listing + b"\n" + _recipe()).hexdigest()[:32]
    return os.path.join(storage.cache_root(), "onnx", key)


def graph_path(model_dir: str, backend: str) -> str:
    """The graph file `backend` runs, exported (and quantized) on first use on this machine."""
    if backend not in FILES:
        raise OnnxBackendError(f"score.backend: {backend!r} has no ONNX graph; expected one of "
                               f"{list(FILES)}")
    folder = cache_dir(model_dir)
    fp32 = os.path.join(folder, FILES["onnx"])
    if not os.path.isfile(fp32):
        _create(fp32, lambda tmp: export_onnx(model_dir, tmp))
    if backend == "onnx":
        return fp32
    int8 = os.path.join(folder, FILES["onnx-int8"])
    if not os.path.isfile(int8):
        _create(int8, lambda tmp: quantize_int8(fp32, tmp))
    return int8


def _create(path: str, write) -> None:
    """Write a cache file under a temporary name, then rename: readers see all of it or none;
    two processes racing both write and the last rename wins with identical content."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def file_digest(path: str) -> str:
    """sha256 of a file, hashed once per version of it in this process: a job asks for its
    graph's digest several times (model id, scoring, manifest), and cache files only ever change
    by an atomic rename (a new inode and mtime)."""
    st = os.stat(path)
    return _digest(path, st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def onnx_digest(model_dir: str, backend: str) -> str:
    """sha256 of the graph `backend` runs for this export ("" for torch: the weights are the
    model). Exports/quantizes on first use. Fold it into the model id next to the export's own
    content hash, so scores from different graphs never share an id."""
    if backend == "torch":
        return ""
    return file_digest(graph_path(model_dir, backend))


class _Logits(torch.nn.Module):
    """The export's forward with named tensor inputs and one output, logits [B, num_outputs]."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors))).logits


def sample_inputs(meta, tokenizer, rows: int) -> dict[str, np.ndarray]:
    """Padded model inputs of `rows` rows of different lengths, as the Scorer feeds them."""
    if meta.kind == "mlp":
        rng = np.random.default_rng(0)
        return {data.FEATURES: rng.normal(size=(rows, len(meta.feature_columns))).astype(
            np.float32)}
    words = "the quick brown fox jumps over a lazy dog while it rains again".split()
    texts = [" ".join(words[: 1 + (3 * i) % len(words)]) for i in range(rows)]
    pair = texts[::-1] if meta.text_pair_column else None
    enc = tokenizer(texts, pair, truncation=True, max_length=meta.max_length,
                    return_attention_mask=False)
    batch = {"input_ids": data.tokenize._ragged(enc["input_ids"], np.int32)}
    if pair is not None and "token_type_ids" in enc:
        batch["token_type_ids"] = data.tokenize._ragged(enc["token_type_ids"], np.int8)
    return data.pad_batch(batch, *data.padding_of(tokenizer))


def export_onnx(model_dir: str, out_path: str) -> None:
    """The export's fp32 ONNX graph, dynamic batch (and sequence) axes, checked against torch.

    The TorchScript exporter first: on MiniLM its graph runs about 10% faster on ONNX Runtime's
    CPU provider than the dynamo exporter's (860 vs 770 rows/s, 2 threads; `mlc-dist bench
    score --backend onnx`). It is deprecated in torch 2.9+, so a model it cannot export, or a
    torch without it, gets the dynamo exporter's graph instead; either way the graph is checked.
    A head that reads [CLS] only gets the graph with the last layer at [CLS] only
    (`_export_first_token`), checked against the whole model.
    """
    from mlc_dist.artifacts import load_export

    model, tokenizer, meta = load_export(model_dir)
    inputs = sample_inputs(meta, tokenizer, rows=3)
    wrapper = _Logits(model, list(inputs)).eval()
    check = sample_inputs(meta, tokenizer, rows=5)
    if _export_first_token(model, tokenizer, wrapper, inputs, check, out_path, model_dir):
        return
    try:
        _export_torchscript(wrapper, inputs, out_path)
        _check_graph(out_path, wrapper, check, model_dir)
        return
    except Exception as exc:  # noqa: BLE001 - the dynamo exporter is the fallback for any failure
        log.debug("TorchScript ONNX export failed (%s); using the dynamo exporter", exc)
    try:
        _export_dynamo(wrapper, inputs, out_path)
    except Exception as exc:  # noqa: BLE001 - any exporter failure is a refusal, said once
        family = getattr(model.config, "model_type", type(model).__name__)
        reason = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()[0][:200]  # no colours
        raise OnnxBackendError(
            f"{model_dir}: this model ({family}, head {meta.head}) does not export to ONNX "
            f"({type(exc).__name__}: {reason}); use score.backend: "
            "torch") from exc
    _check_graph(out_path, wrapper, check, model_dir)


def _export_first_token(model, tokenizer, reference, inputs, check, out_path,
                        model_dir) -> bool:
    """The graph of `models.readout.first_token_model` (the last layer at [CLS] only: MiniLM-L6
    scores about 15% faster on ONNX Runtime's CPU provider), when the head reads [CLS] only and
    the graph computes what the whole model computes; False otherwise (the whole model then)."""
    from mlc_dist.models.readout import first_token_model

    fast = first_token_model(model, data.padding_of(tokenizer)[1]) if tokenizer else None
    if fast is None:
        return False
    try:
        _export_torchscript(_Logits(fast, list(inputs)).eval(), inputs, out_path)
        _check_graph(out_path, reference, check, model_dir)
        return True
    except Exception as exc:  # noqa: BLE001 - any failure: export the whole model instead
        log.info("%s: the graph with the last layer at [CLS] only did not hold (%s: %s); "
                 "exporting the whole model", model_dir, type(exc).__name__, exc)
        return False


def _export_torchscript(wrapper: torch.nn.Module, inputs: dict, out_path: str) -> None:
    import warnings

    names = list(inputs)
    axes = {n: {0: "batch"} if n == data.FEATURES else {0: "batch", 1: "sequence"}
            for n in names}
    args = tuple(torch.from_numpy(inputs[n]).to(torch.float32 if n == data.FEATURES
                                                 else torch.int64) for n in names)
    with warnings.catch_warnings():  # its deprecation notice, and tracer notes on HF code
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, out_path, dynamo=False, input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=OPSET_TS)


def _export_dynamo(wrapper: torch.nn.Module, inputs: dict, out_path: str) -> None:
    names = list(inputs)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = tuple({0: batch} if n == data.FEATURES else {0: batch, 1: seq} for n in names)
    program = torch.onnx.export(
        wrapper, tuple(torch.from_numpy(inputs[n]) for n in names), dynamo=True,
        input_names=names, output_names=["logits"], dynamic_shapes=(shapes,),
        opset_version=OPSET, external_data=False, optimize=True, verbose=False)
    program.save(out_path, external_data=False)


def _check_graph(path: str, wrapper: torch.nn.Module, inputs: dict, model_dir: str) -> None:
    """Refuse a graph that does not compute what torch computes, on shapes it was not traced on."""
    with torch.inference_mode():
        want = wrapper(*(torch.from_numpy(v) for v in inputs.values())).numpy()
    got = OnnxModel(path, num_threads=1)(inputs)
    diff = float(np.abs(got - want).max())
    if not diff <= EXPORT_TOLERANCE:
        raise OnnxBackendError(f"{model_dir}: the ONNX graph's logits differ from torch's by "
                               f"{diff:.2e} (> {EXPORT_TOLERANCE}); use score.backend: torch")


def quantize_int8(fp32_path: str, out_path: str) -> None:
    """Dynamic int8 quantization: per-channel symmetric int8 weights, activations quantized per
    call (no calibration data). The graph is first shape-inferred and optimized by
    `quant_pre_process`, as ONNX Runtime recommends for transformer graphs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = f"{out_path}.pre.onnx"
    try:
        try:
            quant_pre_process(fp32_path, pre, auto_merge=True)
        except Exception:  # noqa: BLE001 - symbolic shapes incomplete: ONNX's own inference
            _remove_shape_inference_dump()
            quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
        quantize_dynamic(pre, out_path, per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=INT8_OP_TYPES,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        if os.path.exists(pre):
            os.remove(pre)


def _remove_shape_inference_dump(name: str = "sym_shape_infer_temp.onnx") -> None:
    """ORT's symbolic shape inference, when incomplete, dumps its model (and external data)
    into the working directory before raising; remove that, not leave it in the user's folder."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    if not os.path.isfile(name):
        return
    model = onnx.load(name, load_external_data=False)
    for location in {ExternalDataInfo(t).location for t in model.graph.initializer
                     if uses_external_data(t)}:
        if os.path.isfile(location):
            os.remove(location)
    os.remove(name)


class OnnxModel:
    """An ONNX Runtime CPU session over one graph: padded numpy inputs -> logits (numpy)."""

    def __init__(self, path: str, num_threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between sub-batches: the node's tokenize tasks need those cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        # ORT's SkipLayerNormalization fusion makes these graphs slower on CPU (its kernel took
        # 14% of the dynamo graph's time against 3% for the plain LayerNorm + Add it replaces:
        # 665 -> 770 rows/s on MiniLM, 2 threads); outputs are the same either way.
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=["SkipLayerNormFusion"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {}
        for name in self.input_names:
            value = np.asarray(inputs[name])
            feed[name] = value.astype(np.float32 if value.dtype.kind == "f" else np.int64,
                                      copy=False)
        return self.session.run(None, feed)[0]



def load_onnx(model_dir: str, backend: str, num_threads: int | None = None,
              expected_sha256: str | None = None):
    """(OnnxModel, tokenizer or None, meta) for an export: the Scorer's inputs for `backend`,
    without loading the torch weights (the graph is exported from them on first use only).

    `expected_sha256`: the graph the job identified (its model id holds it); a node whose own
    graph differs (another torch or onnxruntime there) is refused rather than scoring under
    that id."""
    from mlc_dist.artifacts import read_meta

    local = storage.local_copy(model_dir)
    meta = read_meta(local)
    has_tokenizer = os.path.isfile(os.path.join(local, "tokenizer_config.json"))
    tokenizer = data.load_tokenizer(local) if has_tokenizer else None
    path = graph_path(model_dir, backend)
    found = file_digest(path) if expected_sha256 else None
    if found != expected_sha256:
        import socket

        raise OnnxBackendError(
            f"{model_dir}: the {backend} graph on {socket.gethostname()} ({path}, sha256 "
            f"{found[:16]}) is not the one this job identified ({expected_sha256[:16]}"
            "): its torch or onnxruntime differ from the driver's; install the same versions "
            "on every node, or use score.backend: torch")
    return OnnxModel(path, num_threads), tokenizer, meta


def export_graphs(model_dir: str, backends=("onnx", "onnx-int8")) -> dict:
    """`mlc-dist export-onnx`: each backend's graph made (or found) in this machine's cache."""
    return {b: {"path": graph_path(model_dir, b), "sha256": onnx_digest(model_dir, b)}
            for b in backends}

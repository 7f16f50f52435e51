"""`mlc-dist bench score --backend`: the scoring backends side by side on the same rows.

Bare loops (one process, length-sorted batches, no Ray) over the ONNX fp32 graph, the ONNX int8
graph and torch's own dynamic int8 (torch.ao quantize_dynamic on nn.Linear, reported only), and
the figures of each against the bare torch fp32 loop: speed ratio, max abs difference, flipped
decisions and the largest per-label AUC drop. Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import csv
import time

import numpy as np
import torch

from mlc_dist import data


def read_labels(path: str, rows: int, num_labels: int) -> np.ndarray | None:
    """GoEmotions-style ids ("2,27") of the rows `read_texts` returns, multi-hot [N, L]; None
    when the file has none or they do not fit the model's labels."""
    with open(path, newline="", encoding="utf-8") as f:
        ids = [r[1] if len(r) > 1 else "" for r in csv.reader(f, delimiter="\t",
                                                               quoting=csv.QUOTE_NONE) if r]
    if rows > 0:
        ids = [ids[i % len(ids)] for i in range(rows)]
    try:
        parsed = [[int(x) for x in s.split(",") if x] for s in ids]
    except ValueError:
        return None
    if not parsed or max((max(p, default=0) for p in parsed)) >= num_labels:
        return None
    out = np.zeros((len(parsed), num_labels), np.int8)
    for i, p in enumerate(parsed):
        out[i, p] = 1
    return out


def bare_loop(tokenizer, texts: list[str], batch_size: int, max_length: int, forward,
              num_outputs: int) -> tuple[float, np.ndarray]:
    """(seconds, logits [N, num_outputs]): tokenize, sort by length, pad per batch, forward."""
    started = time.perf_counter()
    enc = tokenizer(texts, truncation=True, max_length=max_length,
                    return_attention_mask=False)["input_ids"]
    ids = data.tokenize._ragged(enc, np.int32)
    order = np.argsort([len(e) for e in enc], kind="stable")
    padding = data.padding_of(tokenizer)
    logits = np.zeros((len(texts), num_outputs), np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        logits[rows] = forward(data.pad_batch({"input_ids": ids[rows]}, *padding))
    return time.perf_counter() - started, logits


def _torch_forward(model):
    @torch.inference_mode()
    def forward(inputs):
        return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
    return forward


def run_loops(model_dir: str, texts: list[str], batch_size: int) -> dict:
    """{name: (seconds, probabilities)} for onnx, int8 (ONNX) and torch_int8, same rows."""
    from mlc_dist.artifacts import load_export
    from mlc_dist.scoring.onnx_backend import OnnxModel, graph_path

    model, tokenizer, meta = load_export(model_dir)
    outputs = meta.outputs
    forwards = {"onnx": OnnxModel(graph_path(model_dir, "onnx")),
                "int8": OnnxModel(graph_path(model_dir, "onnx-int8")),
                "torch_int8": _torch_forward(torch.ao.quantization.quantize_dynamic(
                    model, {torch.nn.Linear}, dtype=torch.qint8))}
    results = {}
    for name, forward in forwards.items():
        seconds, logits = bare_loop(tokenizer, texts, batch_size, meta.max_length, forward,
                                    outputs.num_outputs)
        results[name] = (seconds, outputs.probabilities(torch.from_numpy(logits)).numpy())
    return results


def versus_fp32(meta, fp32: np.ndarray, probs: np.ndarray, labels: np.ndarray | None) -> dict:
    """max_abs_diff_vs_fp32, decision_flip_rate, max_auc_drop of `probs` vs the fp32 scores
    (AUC against `labels` when given, else against fp32's own decisions)."""
    from mlc_dist.scoring.parity import compare

    outputs = meta.outputs
    truth = {} if labels is None else {n: labels[:, j] for j, n in enumerate(outputs.names)}
    figures = compare(outputs, outputs.columns(fp32, meta.thresholds),
                      outputs.columns(probs, meta.thresholds), truth)
    return {k: figures[k] for k in ("max_abs_diff_vs_fp32", "decision_flip_rate",
                                    "max_auc_drop")}


def backend_figures(model_dir: str, texts: list[str], batch_size: int, labels, bare_s: float,
                    bare: np.ndarray, backend: str, ours_s: float, ours: np.ndarray) -> dict:
    """The bench's backend keys: ours (on `backend`) and each bare loop vs the bare fp32 loop."""
    from mlc_dist.artifacts import read_meta

    meta = read_meta(model_dir)
    out = {"backend": backend, "ratio_vs_bare_fp32": round(bare_s / ours_s, 3),
           "auc_against": "labels" if labels is not None else "fp32 decisions",
           **versus_fp32(meta, bare, ours, labels)}
    for name, (seconds, probs) in run_loops(model_dir, texts, batch_size).items():
        out[f"{name}_rows_per_s"] = round(len(texts) / seconds, 1)
        out[f"{name}_ratio_vs_bare_fp32"] = round(bare_s / seconds, 3)
        out.update({f"{name}_{k}": v for k, v in versus_fp32(meta, bare, probs, labels).items()})
    return out

"""The models: construction and weights (build.py, which also registers our classes with
transformers' Auto* classes), our model kinds (encoder.py, hf.py, mlp.py), heads and pooling
(heads.py), what the outputs mean (outputs.py) and, for scoring only, the last layer run at
the one position a [CLS] head reads (readout.py).

Importing the package is light on purpose: what needs only the output schema or the head names
(reading an export's metadata, an ONNX scoring actor, the scoring driver) never pays for
transformers' modeling code. `build_model` and the other names below load build.py on first use.
"""

from __future__ import annotations

_BUILD_NAMES = ("DEFAULT_DROPOUT", "build_model", "leaves_parameters_unused", "output_bias",
                "resolve_model_path", "separator_token")

__all__ = list(_BUILD_NAMES)


def __getattr__(name: str):
    if name in _BUILD_NAMES:
        from mlc_dist.models import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Command line: parse, load_job, call one function. Nothing else lives here."""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Distributed multi-label text classification on Ray.")

JobArg = Annotated[str, typer.Argument(help="Job YAML file")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override: KEY=VALUE (dotted)")]


def _user_error(exc: BaseException) -> BaseException | None:
    """The project's own error inside whatever Ray wrapped it in, if that is what this is."""
    from mlc_dist.config import JobConfigError
    from mlc_dist.data import as_data_error

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (JobConfigError, FileNotFoundError)):
            return exc
        found = as_data_error(exc)
        if found is not None:
            return found
        exc = exc.__cause__ or exc.__context__
    return None


def _run(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - turn user mistakes into one clear line
        err = _user_error(exc)
        if err is None:
            raise
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


@app.command()
def train(job: JobArg, set_: SetOpt = None):
    """Fine-tune on a Ray cluster (local if none) and export the model."""
    from mlc_dist.config import load_job
    from mlc_dist.train import fit

    def go():
        summary = fit(load_job(job, set_))
        shown = {k: summary[k] for k in ("val_mean_auc", "val_micro_f1", "val_macro_f1", "steps",
                                         "train_samples_per_s", "wall_time_s", "model_dir")}
        typer.echo(json.dumps(shown, indent=2))

    _run(go)


@app.command()
def score(job: JobArg, set_: SetOpt = None,
          input: Annotated[Optional[list[str]], typer.Option(help="Override score.input")] = None,
          output: Annotated[Optional[str], typer.Option(help="Override score.output")] = None):
    """Score Parquet/CSV/JSONL with an exported model; write per-label scores to Parquet."""
    from mlc_dist.config import load_job
    from mlc_dist.score import run

    _run(lambda: typer.echo(json.dumps(run(load_job(job, set_), input, output), indent=2)))


@app.command()
def predict(model_dir: Annotated[str, typer.Argument(help="Exported model folder")],
            texts: Annotated[list[str], typer.Argument(help="Texts to classify")],
            pair: Annotated[Optional[str], typer.Option(help="Second text for pair models")] = None,
            top: Annotated[int, typer.Option(help="Labels to show per text")] = 5):
    """Print label probabilities for a few texts."""
    from mlc_dist.predict import predict_texts

    for text, labels in zip(texts, _run(lambda: predict_texts(model_dir, texts, pair))):
        typer.echo(f"{text!r}")
        for name, prob, on in labels[:top]:
            typer.echo(f"  {'*' if on else ' '} {name:<24} {prob:.3f}")


@app.command("demo-data")
def demo_data(out: Annotated[str, typer.Argument(help="Output folder")],
              rows: Annotated[int, typer.Option(help="Training rows")] = 4000,
              seed: Annotated[int, typer.Option()] = 0,
              kind: Annotated[str, typer.Option(
                  help="text (Jigsaw layout), tabular (12 features, 5 labels) or severity "
                       "(text with a 3-valued label)")] = "text"):
    """Write generated data: train file(s) and score.parquet."""
    from mlc_dist.demo import _KINDS, write_demo_kind

    if kind not in _KINDS:
        raise typer.BadParameter(f"--kind must be one of {sorted(_KINDS)}")
    for name, path in write_demo_kind(out, kind, rows, seed).items():
        typer.echo(f"{name}: {path}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    app()

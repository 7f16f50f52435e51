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


#: Exit codes: 0 done, 1 unexpected failure, 2 user/config/data error, 3 audit failed.
EXIT_USER_ERROR, EXIT_AUDIT_FAILED = 2, 3


def _run(fn):
    from mlc_dist.nightly import AuditError

    try:
        return fn()
    except AuditError as exc:
        typer.echo(f"audit failed: {exc}", err=True)
        raise typer.Exit(EXIT_AUDIT_FAILED) from None
    except Exception as exc:  # noqa: BLE001 - turn user mistakes into one clear line
        err = _user_error(exc)
        if err is None:
            raise
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None


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
          output: Annotated[Optional[str], typer.Option(help="Override score.output")] = None,
          date: Annotated[Optional[str], typer.Option(
              help="Partition YYYY-MM-DD, substituted for {date} in score.input/output")] = None,
          overwrite: Annotated[bool, typer.Option(
              help="Delete the output and start over (default: resume, skipping committed parts)"
          )] = False):
    """Score Parquet/CSV/JSONL with an exported model; one committed Parquet part per input file.

    Exit codes: 0 done (or already complete), 1 unexpected failure, 2 user/config/data error,
    3 audit failed (rows unaccounted for, scores out of range, committed part changed).
    """
    from mlc_dist.config import load_job
    from mlc_dist.score import run

    _run(lambda: typer.echo(json.dumps(run(load_job(job, set_), input, output, date=date,
                                           overwrite=overwrite), indent=2)))


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
              seed: Annotated[int, typer.Option()] = 0):
    """Write a generated corpus in the Jigsaw layout (train.csv, score.parquet)."""
    from mlc_dist.demo import write_demo

    for name, path in write_demo(out, rows, seed).items():
        typer.echo(f"{name}: {path}")


bench = typer.Typer(no_args_is_help=True, help="Benchmarks: print figures as JSON lines.")
app.add_typer(bench, name="bench")


@bench.command("score")
def bench_score(rows: Annotated[int, typer.Option(help="Rows (the dev set, repeated)")] = 0,
                batch_size: Annotated[int, typer.Option(help="Rows per forward pass")] = 64,
                compare: Annotated[bool, typer.Option(
                    help="Also run the transformers pipeline and the bare loop")] = True,
                data_file: Annotated[Optional[str], typer.Option(help="GoEmotions-style TSV")] = None,
                model_dir: Annotated[Optional[str], typer.Option(
                    help="An exported model (default: MiniLM with a fresh head)")] = None):
    """Our scoring job vs transformers.pipeline vs a bare torch loop, same rows and model."""
    from mlc_dist.bench_score import run_bench

    typer.echo(json.dumps(_run(lambda: run_bench(rows, batch_size, compare, data_file, model_dir))))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()

"""Command line: parse, load_job, call one function. Nothing else lives here."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Distributed multi-label text classification on Ray. "
                       "-q/--quiet: warnings and results only; -v/--verbose: debug lines and "
                       "every library's own output.")

JobArg = Annotated[str, typer.Argument(help="Job YAML file")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override: KEY=VALUE (dotted)")]


def _user_error(exc: BaseException) -> BaseException | None:
    """The project's own error inside whatever Ray wrapped it in, if that is what this is."""
    from mlc_dist.config import JobConfigError
    from mlc_dist.data import as_data_error
    from mlc_dist.runtime import raised_remotely

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (JobConfigError, FileNotFoundError)):
            return exc
        found = as_data_error(exc) or raised_remotely(exc, JobConfigError)
        if found is not None:
            return found
        exc = exc.__cause__ or exc.__context__
    return None


#: Exit codes: 0 done, 1 unexpected failure, 2 user/config/data error, 3 audit failed.
EXIT_USER_ERROR, EXIT_AUDIT_FAILED = 2, 3

#: Where results go. `main` points it at the real stdout and sends everything else printed to
#: sys.stdout (Ray's "(raylet) ..." messages and the workers' prints land there) to stderr, so
#: stdout holds nothing but the command's result: `mlc-dist score job.yaml | jq` always parses.
_results = None


def _echo(text: str, nl: bool = True) -> None:
    typer.echo(text, nl=nl, file=_results)


def _run(fn):
    from mlc_dist.scoring import AuditError

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
def train(job: JobArg, set_: SetOpt = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")]
          = False):
    """Fine-tune on a Ray cluster (local if none) and export the model."""
    from mlc_dist.config import load_job
    from mlc_dist.report import run_summary

    def go():
        loaded = load_job(job, set_)
        if loaded.train.folds and loaded.train.fold is None:
            from mlc_dist.cv import cross_validate

            _echo(json.dumps(cross_validate(loaded), indent=2))
            return
        from mlc_dist.train import fit

        summary = fit(loaded)
        _echo(json.dumps(summary_keys(summary), indent=2) if as_json else
                   run_summary(summary))

    _run(go)


def summary_keys(summary: dict) -> dict:
    # Validation keys differ by head (multi-category labels report category accuracy).
    return {k: v for k, v in summary.items() if k.startswith("val_") or k in (
        "steps", "exported_step", "stopped_early_at", "train_samples_per_s", "wall_time_s",
        "model_dir", "report")}


@app.command()
def score(job: JobArg, set_: SetOpt = None,
          date: Annotated[Optional[str], typer.Option(
              help="Partition substituted for {date} in score.input/output: YYYY-MM-DD, or "
                   "yesterday / today (UTC dates when the job runs, for schedulers)")] = None,
          overwrite: Annotated[bool, typer.Option(
              help="Delete the output and start over, under the output's lease (default: resume, "
                   "keeping committed parts whose input and model are unchanged)"
          )] = False):
    """Score Parquet/CSV/JSONL with an exported model; one committed Parquet part per input file.

    Input and output come from the job (score.input, score.output), or `--set score.input=...`.
    Exit codes: 0 done (or already complete), 1 unexpected failure, 2 user/config/data error
    (also: another run holds the output's lease, an input changed during the run, parts scored
    by another model id), 3 audit failed (rows or ids unaccounted for, scores out of range,
    committed part changed) or more rows quarantined than score.max_quarantine_fraction.
    """
    from mlc_dist.config import load_job
    from mlc_dist.scoring import run

    _run(lambda: _echo(json.dumps(run(load_job(job, set_), date=date, overwrite=overwrite),
                                       indent=2)))


@app.command()
def evaluate(job: JobArg, set_: SetOpt = None):
    """Score a labelled set (evaluate.input); write metrics.json, per_label.csv/.md and report/;
    print the table."""
    from mlc_dist.config import load_job
    from mlc_dist.evaluate import run
    from mlc_dist.report import to_text

    summary = _run(lambda: run(load_job(job, set_)))
    _echo(to_text(summary))
    _echo(f"written to {summary['output']} (report: {summary['report']})")


@app.command()
def predict(model_dir: Annotated[str, typer.Argument(help="Exported model folder")],
            texts: Annotated[list[str], typer.Argument(
                help="Texts to classify; for a model that reads several columns "
                     "(data.text_columns/text_template), each a JSON object with them")],
            pair: Annotated[Optional[str], typer.Option(help="Second text for pair models")] = None,
            top: Annotated[int, typer.Option(help="Labels to show per text")] = 5):
    """Print label probabilities for a few texts."""
    from mlc_dist.artifacts import read_meta
    from mlc_dist.predict import predict_texts

    def go():
        items = texts
        if read_meta(model_dir).text_template:  # each TEXT: {column: value} as JSON
            items = [_json_object(t) for t in texts]
        return predict_texts(model_dir, items, pair)

    for text, labels in zip(texts, _run(go)):
        _echo(f"{text!r}")
        for name, prob, on in labels[:top]:
            _echo(f"  {'*' if on else ' '} {name:<24} {prob:.3f}")


def _json_object(text: str):
    """A JSON object (or what predict_texts refuses with the columns it needs)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@app.command("export-onnx")
def export_onnx(model_dir: Annotated[str, typer.Argument(help="Exported model folder or URI")],
                int8: Annotated[bool, typer.Option(help="Also the int8 graph")] = True,
                parity_sample: Annotated[Optional[str], typer.Option(
                    help="Run the int8 parity gate on this file (exit 2 if it fails)")] = None):
    """Make the export's ONNX graphs (score.backend onnx / onnx-int8) in this machine's cache;
    print their paths and sha256 (and the parity figures) as JSON."""
    from mlc_dist.scoring import onnx_backend, parity

    def go():
        out = onnx_backend.export_graphs(model_dir, ("onnx", "onnx-int8") if int8 else ("onnx",))
        if parity_sample:
            out["parity"] = parity.gate(parity.check_int8(model_dir, parity_sample), model_dir)
        return out

    _echo(json.dumps(_run(go), indent=2))


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
        _echo(f"{name}: {path}")


AddressOpt = Annotated[str, typer.Option(help="Ray dashboard address, e.g. http://127.0.0.1:8265",
                                         envvar="RAY_API_SERVER_ADDRESS")]


@app.command()
def submit(job: JobArg, address: AddressOpt, set_: SetOpt = None,
           command: Annotated[str, typer.Option(help="train | score | evaluate")] = "train",
           date: Annotated[Optional[str], typer.Option(
               help="score: the nightly partition YYYY-MM-DD, passed to `score --date`; the "
                    "submission id becomes mlc-dist-score-<run.name>-<date>, so a retry of the "
                    "same night finds the first run instead of starting another")] = None,
           submission_id: Annotated[Optional[str], typer.Option(
               help="Ray submission id (default: derived from --date, else Ray's own)")] = None,
           follow: Annotated[bool, typer.Option(help="Stream logs; exit with the job's outcome")]
           = False):
    """Submit a job to a Ray cluster with the Ray Jobs SDK; prints the job id."""
    from mlc_dist import submit as jobs_api

    submitted = _run(lambda: jobs_api.submit(job, address, set_ or [], command,
                                             submission_id=submission_id, date=date))
    _echo(submitted.job_id)
    if submitted.existing:
        typer.echo(f"job {submitted.job_id} already submitted ({submitted.existing}): "
                   "not submitted again", err=True)
    if follow:
        final = jobs_api.follow(submitted.job_id, address, out=_results or sys.stdout)
        _echo(f"job {submitted.job_id}: {final}")
        raise typer.Exit(0 if final == "SUCCEEDED" else 1)


jobs_app = typer.Typer(no_args_is_help=True, help="Inspect or stop submitted Ray jobs.")
app.add_typer(jobs_app, name="jobs")
JobIdArg = Annotated[str, typer.Argument(help="Ray job (submission) id")]


@jobs_app.command("status")
def jobs_status(job_id: JobIdArg, address: AddressOpt):
    from mlc_dist import submit as jobs_api

    _echo(json.dumps(jobs_api.info(job_id, address), indent=2))


@jobs_app.command("logs")
def jobs_logs(job_id: JobIdArg, address: AddressOpt,
              follow: Annotated[bool, typer.Option(help="Stream until the job ends")] = False):
    from mlc_dist import submit as jobs_api

    if follow:
        final = jobs_api.follow(job_id, address, out=_results or sys.stdout)
        raise typer.Exit(0 if final == "SUCCEEDED" else 1)
    _echo(jobs_api.logs(job_id, address), nl=False)


@jobs_app.command("stop")
def jobs_stop(job_id: JobIdArg, address: AddressOpt):
    from mlc_dist import submit as jobs_api

    _echo("stopped" if jobs_api.stop(job_id, address) else "not running")


@app.command()
def render(kind: Annotated[str, typer.Argument(help="rayjob | cronjob")], job: JobArg,
           image: Annotated[str, typer.Option(help="Container image built from infra/Dockerfile")],
           set_: SetOpt = None,
           schedule: Annotated[str, typer.Option(
               help="Cron schedule in UTC, once a day (cronjob)")] = "0 2 * * *"):
    """Print a KubeRay RayJob (training) or RayCronJob (nightly scoring of yesterday's partition)
    generated from a job file; each brings up its own Ray cluster and deletes it afterwards.

    Outputs must be object-store URIs (pods keep nothing): override local ones with --set,
    e.g. --set score.output=s3://BUCKET/scores/date={date}.
    """
    from mlc_dist.render import render as render_manifest

    _echo(_run(lambda: render_manifest(kind, job, image, set_ or [], schedule)), nl=False)


@app.command()
def scale(job: JobArg, set_: SetOpt = None,
          workers: Annotated[str, typer.Option(help="Worker counts, comma-separated")] = "1,2",
          steps: Annotated[int, typer.Option(help="Optimizer steps per run")] = 30,
          peak_tflops: Annotated[Optional[float], typer.Option(
              help="Peak TFLOP/s per device for MFU (default: by GPU name)")] = None):
    """Train the same job at several worker counts; write scaling.csv/.md/.png and print the table."""
    from mlc_dist.config import load_job
    from mlc_dist.scale import sweep

    def go():
        counts = [int(w) for w in workers.split(",") if w.strip()]
        result = sweep(load_job(job, set_), counts, steps, peak_tflops)
        _echo(result["table"])
        _echo(json.dumps({k: result[k] for k in ("csv", "md", "png")}))

    _run(go)


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print figures.")
RepeatsOpt = Annotated[int, typer.Option(
    min=1, help="Rounds, each running every side once; figures are medians with their spread")]
app.add_typer(bench_app, name="bench")


@bench_app.command("train")
def bench_train(job: Annotated[str, typer.Option(help="Job YAML (CSV/TSV train + validation)")]
                = "jobs/goemotions.yaml", set_: SetOpt = None,
                samples: Annotated[int, typer.Option(help="Training rows (1 epoch)")] = 2048,
                val_rows: Annotated[int, typer.Option(help="Validation rows")] = 1000,
                repeats: RepeatsOpt = 3):
    """Our training path vs the HF Trainer recipe (padding to 128) on the same rows, each side
    run `repeats` times interleaved: one JSON line of medians with their spread."""
    from mlc_dist.bench import bench_train as run_bench
    from mlc_dist.config import load_job

    _run(lambda: _echo(json.dumps(run_bench(load_job(job, set_), samples, val_rows,
                                            repeats=repeats))))


@bench_app.command("score")
def bench_score(rows: Annotated[int, typer.Option(
                    help="Rows: the dev set's texts, repeated (0 = the dev set once)")] = 20000,
                batch_size: Annotated[Optional[int], typer.Option(
                    help="Rows per forward pass (default: 64 on CPU, 256 on a GPU)")] = None,
                compare: Annotated[bool, typer.Option(
                    help="Also run the transformers pipeline and the bare loop")] = True,
                data_file: Annotated[Optional[str], typer.Option(
                    help="GoEmotions-style TSV (default: its dev set), or a CSV/Parquet/JSONL "
                         "table in the model's layout (text column; label columns optional)")]
                = None,
                model_dir: Annotated[Optional[str], typer.Option(
                    help="An exported model (default: MiniLM with a fresh head)")] = None,
                files: Annotated[int, typer.Option(
                    help="Split the rows over this many Parquet files (a nightly drop)")] = 1,
                backend: Annotated[str, typer.Option(
                    help="score.backend of our job: torch | onnx | onnx-int8")] = "torch",
                repeats: RepeatsOpt = 3,
                pipeline: Annotated[bool, typer.Option(
                    help="Also run transformers.pipeline (the slowest side)")] = True):
    """Our scoring job vs transformers.pipeline vs a bare torch loop, same rows and model; with
    the ONNX fp32/int8 and torch int8 bare loops against fp32. Every side runs `repeats` times
    interleaved: one JSON line of medians with their spread."""
    from mlc_dist.bench_score import run_bench

    _echo(json.dumps(_run(lambda: run_bench(rows, batch_size, compare, data_file, model_dir,
                                                 files, backend, repeats=repeats,
                                                 pipeline=pipeline))))


@bench_app.command("ingest")
def bench_ingest(rows: Annotated[int, typer.Option(
                     help="Rows of the generated Jigsaw-layout corpus (and a tenth of them)")]
                 = 1_000_000,
                 files: Annotated[int, typer.Option(help="Parquet files the rows are split over")]
                 = 8,
                 train_steps: Annotated[int, typer.Option(
                     help="Steps of a 1-worker training run on it, for its data wait (0: none)")]
                 = 30):
    """Ray Data read -> validate -> tokenize vs one process tokenizing, the driver's memory, and
    the fraction of step time training waits on its data: one JSON line."""
    from mlc_dist.bench_ingest import run_bench

    _echo(json.dumps(_run(lambda: run_bench(rows, files, train_steps))))


#: Accepted anywhere on the line (click takes a group's options only before the command).
_VERBOSITY_FLAGS = {"-q": -1, "--quiet": -1, "-v": 1, "--verbose": 1}


def main() -> None:
    from mlc_dist import logs

    args = sys.argv[1:]
    flags = [a for a in args if a in _VERBOSITY_FLAGS]
    logs.configure(min(_VERBOSITY_FLAGS[f] for f in flags) if flags else None)
    global _results
    _results, sys.stdout = sys.stdout, sys.stderr
    app(args=[a for a in args if a not in _VERBOSITY_FLAGS], prog_name="mlc-dist")


if __name__ == "__main__":
    main()

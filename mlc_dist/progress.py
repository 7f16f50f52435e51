"""Progress on the driver: a live bar on a terminal, plain log lines elsewhere (CI, log files).

Training: rank 0 pushes small events to a `ProgressSink` actor (fire-and-forget); a driver thread
drains it while `trainer.fit()` blocks. Scoring runs its loop on the driver and updates directly.
`--quiet` shows neither.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time

from mlc_dist import logs

log = logging.getLogger(__name__)
POLL_S = 0.5


def _use_bar() -> bool:
    return sys.stderr.isatty()


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else \
        f"{minutes}:{secs:02d}"


def _sink_class():
    import ray

    @ray.remote(num_cpus=0)
    class ProgressSink:
        """A mailbox between the workers and the driver's display."""

        def __init__(self):
            self.events: list[dict] = []

        def push(self, event: dict) -> None:
            self.events.append(event)

        def drain(self) -> list[dict]:
            out, self.events = self.events, []
            return out

    return ProgressSink


class TrainDisplay:
    """Step, loss, samples/s, ETA and the latest validation figures, from rank 0's events."""

    def __init__(self, total_steps: int):
        self.total, self.first, self.last_val = total_steps, None, {}
        self.bar = None
        if _use_bar():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, unit="step", desc="training", dynamic_ncols=True,
                            file=sys.stderr)

    def rates(self, event: dict, now: float) -> tuple[float | None, float | None]:
        """(samples/s, ETA in s) since the first event of this attempt."""
        if self.first is None or event["step"] < self.first[1]:  # start, or a restart
            self.first = (now, event["step"], event["samples"])
            return None, None
        elapsed = now - self.first[0]
        if elapsed <= 0 or event["step"] == self.first[1]:
            return None, None
        steps_per_s = (event["step"] - self.first[1]) / elapsed
        return (event["samples"] - self.first[2]) / elapsed, (self.total - event["step"]) / \
            steps_per_s

    def update(self, event: dict, now: float) -> None:
        samples_per_s, eta = self.rates(event, now)
        val = {k: v for k, v in event.items() if k.startswith("val_") and v is not None}
        self.last_val.update(val)
        if self.bar is not None:
            self.bar.n = event["step"]
            shown = {"epoch": event["epoch"]}
            if "loss" in event:
                shown["loss"] = f"{event['loss']:.4f}"
            if samples_per_s:
                shown["samples/s"] = f"{samples_per_s:.1f}"
            shown.update({k: f"{v:.3f}" for k, v in self.last_val.items()
                          if k in ("val_mean_auc", "val_macro_f1_tuned", "val_micro_f1")})
            self.bar.set_postfix(shown, refresh=False)
            self.bar.refresh()
            return
        if val:
            log.info("step %d/%d validation: %s", event["step"], self.total,
                     ", ".join(f"{k}={v:.4f}" for k, v in val.items()))
        elif "loss" in event:
            log.info("step %d/%d epoch %d loss %.4f lr %.2e, %s samples/s, ETA %s",
                     event["step"], self.total, event["epoch"], event["loss"], event["lr"],
                     f"{samples_per_s:.1f}" if samples_per_s else "?", _duration(eta))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def training(total_steps: int):
    """Yields the sink to pass to the workers (None with --quiet); shows progress meanwhile."""
    import ray

    if logs.verbosity() <= logs.QUIET:
        yield None
        return
    sink = _sink_class().remote()
    display, stop = TrainDisplay(total_steps), threading.Event()

    def pump():
        while True:
            stopping = stop.wait(POLL_S)
            try:
                events = ray.get(sink.drain.remote())
            except Exception:  # noqa: BLE001 - the display must never fail the run
                return
            for event in events:  # timed where they happened: they arrive in bunches
                display.update(event, event.get("time", time.time()))
            if stopping:
                return

    thread = threading.Thread(target=pump, name="mlc-dist-progress", daemon=True)
    with _redirect_logging():
        thread.start()
        try:
            yield sink
        finally:
            stop.set()
            thread.join(timeout=10)
            display.close()
            ray.kill(sink)


class ScoreDisplay:
    """Rows scored, rows/s, parts committed and rows quarantined for one scoring run."""

    def __init__(self, total_rows: int, total_parts: int):
        self.total_rows, self.total_parts = total_rows, total_parts
        self.rows = self.parts = self.quarantined = 0
        self.started = time.monotonic()
        self.bar = None
        if _use_bar() and logs.verbosity() > logs.QUIET:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_rows, unit="row", desc="scoring", dynamic_ncols=True,
                            file=sys.stderr)

    def rows_done(self, rows: int, quarantined: int) -> None:
        self.rows += rows
        self.quarantined += quarantined
        if self.bar is not None:
            self.bar.update(rows)
            self._postfix()

    def part_committed(self, name: str, rows_out: int, rows_quarantined: int) -> None:
        self.parts += 1
        if self.bar is not None:
            self._postfix()
            return
        rate = self.rows / max(time.monotonic() - self.started, 1e-9)
        log.info("%s committed: %d rows (%d quarantined); %d/%d parts, %d/%d rows, %.1f rows/s",
                 name, rows_out, rows_quarantined, self.parts, self.total_parts, self.rows,
                 self.total_rows, rate)

    def _postfix(self) -> None:
        self.bar.set_postfix({"parts": f"{self.parts}/{self.total_parts}",
                              "quarantined": self.quarantined}, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def scoring(total_rows: int, total_parts: int):
    display = ScoreDisplay(total_rows, total_parts)
    with _redirect_logging():
        try:
            yield display
        finally:
            display.close()


def _redirect_logging():
    """Our log lines print above a live bar instead of through it."""
    if not _use_bar():
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm([logging.getLogger("mlc_dist")])

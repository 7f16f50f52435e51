"""What a user sees: plain progress lines off a terminal, library noise silenced at its source,
and a TrainState that survives a checkpoint."""

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from mlc_dist import logs
from mlc_dist.config import ModelConfig
from mlc_dist.labels import LabelSpace
from mlc_dist.models import build_model
from mlc_dist.progress import TrainDisplay
from mlc_dist.train import TrainState


@pytest.fixture
def mlc_log(caplog):
    # The CLI's logger does not propagate to the root (where caplog listens) once configured.
    logger = logging.getLogger("mlc_dist")
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="mlc_dist")
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


def test_plain_progress_lines_give_rate_eta_and_validation(mlc_log):
    display = TrainDisplay(total_steps=100)
    assert display.bar is None  # pytest's stderr is not a terminal
    display.update({"step": 1, "total": 100, "epoch": 0, "samples": 8}, now=0.0)
    display.update({"step": 10, "total": 100, "epoch": 0, "samples": 80}, now=5.0)  # no loss
    display.update({"step": 20, "total": 100, "epoch": 0, "samples": 160, "loss": 0.5,
                    "lr": 1e-4}, now=10.0)
    display.update({"step": 20, "total": 100, "epoch": 0, "samples": 160, "val_mean_auc": 0.75,
                    "val_micro_f1": 0.5}, now=11.0)
    lines = [r.getMessage() for r in mlc_log.records]
    # 152 samples in 10 s; 19 steps in 10 s leave 80 steps: 42 s.
    assert lines == ["step 20/100 epoch 0 loss 0.5000 lr 1.00e-04, 15.2 samples/s, ETA 0:42",
                     "step 20/100 validation: val_mean_auc=0.7500, val_micro_f1=0.5000"]


def test_train_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    state = TrainState(global_step=7, epoch=1, batches_done=3, train_samples=224,
                       history=[{"step": 5, "loss": 0.25, "lr": 1e-4}], resumed_from=[4])
    torch.save(state.state_dict(), tmp_path / "state.pt")
    loaded = TrainState()
    loaded.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert loaded == state


def test_drop_message_filters_one_text_of_one_logger_only():
    logs.quiet_libraries(logs.NORMAL)
    progress = logging.getLogger("ray.data._internal.progress")
    notice = logging.LogRecord("ray.data._internal.progress", logging.WARNING, "f", 1,
                               "Progress bars disabled. To enable, set ...", None, None)
    other = logging.LogRecord("ray.data._internal.progress", logging.WARNING, "f", 1,
                              "Progress bar failed", None, None)
    assert not progress.filter(notice) and progress.filter(other)
    assert logging.getLogger("ray.data").filter(notice)  # only the emitting logger is filtered


def test_new_head_loads_without_the_load_report_but_a_missing_encoder_weight_is_named(
        tiny_bert, tmp_path, capfd, mlc_log):
    space = LabelSpace.from_names(["a", "b"])
    build_model(ModelConfig(name=tiny_bert), space)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "MISSING" not in err
    assert not [r for r in mlc_log.records if r.levelno >= logging.WARNING]

    # The same checkpoint with one encoder weight removed: that one is worth a warning.
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_bert_files(tiny_bert):
        (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(broken / "model.safetensors")
    dropped = next(k for k in weights if "layer.0.attention.self.query.weight" in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, broken / "model.safetensors")
    build_model(ModelConfig(name=str(broken)), space)
    warned = [r.getMessage() for r in mlc_log.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "encoder.layer.0.attention.self.query.weight" in warned[0]


def tiny_bert_files(path):
    from pathlib import Path

    return [f for f in Path(path).iterdir() if f.is_file()]


def test_stdout_carries_only_the_result_when_ray_prints_to_it(tmp_path):
    """Ray prints its "(raylet) A worker died ..." messages and the workers' prints to the
    driver's sys.stdout; a nightly script that parses `mlc-dist score`'s JSON must still get JSON."""
    import json
    import subprocess
    import sys

    script = tmp_path / "noisy.py"
    script.write_text(
        "import sys\n"
        "from ray._private.worker import print_to_stdstream\n"
        "from mlc_dist import cli\n"
        "@cli.app.command('noisy')\n"
        "def noisy():\n"
        "    print_to_stdstream({'lines': ['A worker died or was killed'], 'pid': 'raylet',\n"
        "                        'is_err': False}, ignore_prefix=False)\n"
        "    print('a worker prints')\n"
        "    cli._echo(cli.json.dumps({'parts_committed': 2}))\n"
        "@cli.app.command('other')\n"
        "def other():\n"
        "    pass\n"
        "sys.argv = ['mlc-dist', 'noisy']\n"
        "cli.main()\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"parts_committed": 2}
    assert "A worker died or was killed" in done.stderr and "a worker prints" in done.stderr

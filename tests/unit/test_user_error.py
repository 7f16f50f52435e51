"""The CLI's one-line errors for our config errors that Ray hands back only as text."""

from mlc_dist.cli import _user_error
from mlc_dist.scoring.lease import LeaseHeld
from mlc_dist.scoring.onnx_backend import OnnxBackendError

# What Ray keeps of an exception raised in an actor's constructor (ActorDiedError's text).
REMOTE = ("The actor died because of an error raised in its creation task, ray::MapWorker("
          "...).__init__() (pid=1, ip=10.0.0.2)\n  File \"pipeline.py\", line 90, in __init__\n"
          "{line}\n")


def test_our_config_error_in_ray_text_comes_back_with_its_type_and_message():
    line = ("mlc_dist.scoring.onnx_backend.OnnxBackendError: m: the onnx graph on node-2 (sha256 "
            "ab12) is not the one this job identified (cd34)")
    found = _user_error(RuntimeError(REMOTE.format(line=line)))
    assert type(found) is OnnxBackendError
    assert str(found) == ("m: the onnx graph on node-2 (sha256 ab12) is not the one this job "
                          "identified (cd34)")
    held = _user_error(RuntimeError(REMOTE.format(
        line="mlc_dist.scoring.lease.LeaseHeld: out/ is being written by run 7")))
    assert type(held) is LeaseHeld and str(held) == "out/ is being written by run 7"


def test_other_errors_in_ray_text_stay_unexpected():
    for line in ("mlc_dist.artifacts.ExportChanged: replaced during the run",  # not a config error
                 "mlc_dist.scoring.nowhere.FooError: no such module",
                 "ValueError: mlc_dist is not in this line's class"):
        assert _user_error(RuntimeError(REMOTE.format(line=line))) is None, line

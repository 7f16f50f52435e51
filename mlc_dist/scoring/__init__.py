"""Batch scoring: the Ray Data pipeline (pipeline.py), its input policy (textcheck.py), the commit
protocol (commit.py) and the rerunnable nightly job that drives them (nightly.py)."""

from mlc_dist.scoring.commit import AuditError, InputChanged
from mlc_dist.scoring.fingerprint import model_id, scoring_settings
from mlc_dist.scoring.lease import LeaseHeld, LeaseLost
from mlc_dist.scoring.manifest import is_complete, read_manifest, read_scores
from mlc_dist.scoring.nightly import FAULT_ENV, QuarantineGateFailed, run
from mlc_dist.scoring.pipeline import Scorer, score_dataset

__all__ = ["FAULT_ENV", "AuditError", "InputChanged", "LeaseHeld", "LeaseLost",
           "QuarantineGateFailed", "Scorer", "is_complete", "model_id", "read_manifest",
           "read_scores", "run", "score_dataset", "scoring_settings"]

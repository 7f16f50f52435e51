"""Batch scoring: the Ray Data pipeline (pipeline.py), its input policy (textcheck.py), the commit
protocol (commit.py) and the rerunnable nightly job that drives them (nightly.py)."""

from mlc_dist.scoring.commit import AuditError, is_complete, model_id, read_scores
from mlc_dist.scoring.nightly import FAULT_ENV, run
from mlc_dist.scoring.pipeline import Scorer, score_dataset

__all__ = ["FAULT_ENV", "AuditError", "Scorer", "is_complete", "model_id", "read_scores", "run",
           "score_dataset"]

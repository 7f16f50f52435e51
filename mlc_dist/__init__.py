"""mlc-dist: distributed training and batch scoring for multi-label text classification."""

__version__ = "0.1.0"


def read_scores(output: str):
    """The scores of a complete nightly output as a pyarrow Table: exactly the parts its
    `_manifest.json` lists, each checked against its checksum; for a Delta output (a
    `_delta_log/` in the folder), the table version the manifest publishes, its parts checked
    against their records (mlc_dist.scoring.manifest, delta)."""
    from mlc_dist.scoring.manifest import read_scores as _read_scores

    return _read_scores(output)

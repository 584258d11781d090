"""Prefect flow `prune-runs`: `ratio-cnn prune` on a schedule (deploy/prefect.yaml: `prune-runs/weekly`).

No retries: a prune stopped by a storage outage leaves every run readable, and the next one
finishes it (ratio_cnn/retention.py).
"""
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from ratio_cnn.config import PRUNE_DEFAULTS
from ratio_cnn.retention import Policy, prune


@flow(name="prune-runs")
def prune_runs(out: str, keep_last: int = PRUNE_DEFAULTS["keep_last"],
               keep_days: float | None = PRUNE_DEFAULTS["keep_days"], keep_heavy: int = PRUNE_DEFAULTS["keep_heavy"],
               dry_run: bool = False) -> str:
    """Old runs under `out` lose their weights and predictions, then their working files (docs/operations.md)."""
    summary = prune(out, Policy(keep_last, keep_days, keep_heavy), dry_run=dry_run).summary()
    get_run_logger().info(summary)
    create_markdown_artifact(key="ratio-study-prune", markdown=f"# Prune of `{out}`\n\n```\n{summary}\n```\n",
                             description="What `ratio-cnn prune` removed from the results folder")
    return summary

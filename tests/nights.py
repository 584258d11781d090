"""Thirty nights of the nightly study, as an operator's schedule runs them (tests/test_nights.py).

Each night runs the real `ratio-study` flow (one tiny ratio, in-process) on a Prefect server,
reading its dataset from S3 and caching on this "worker" under a small --cache-max-gb; the data
grows on nights 8, 15 and 22; every seventh night, and after the last, the real `prune-runs`
flow applies the retention policy to the bucket. Night 20 runs a planted broken release whose
models output the negated logit: same data, same configuration, worse ranking.

    python tests/nights.py OUT_URI DATA_URI CACHE_DIR RECORD_JSON
"""
import json
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

from torch import nn

NIGHTS = 30
GROWTH = {1: (30, 80), 8: (34, 90), 15: (38, 100), 22: (42, 110)}  # night -> malignant, benign images
CACHE_MAX_GB = 0.012  # about two of the four datasets' decoded sets and objects
RETENTION = {"keep_last": 10, "keep_heavy": 3}
PLANTED_NIGHT = 20
TINY = dict(epochs=1, batch_size=16, seeds=[0], train_malignant=12, val_malignant=6, val_benign=20,
            test_malignant=10, test_benign=30, device="cpu", save_models="none")


class Negated(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return -self.model(x)


@contextmanager
def broken_release():
    """Every evaluation (val and test) sees the negated logit of the trained model."""
    from ratio_cnn import job

    evaluate = job.evaluate
    job.evaluate = lambda model, *args: evaluate(Negated(model), *args)
    try:
        yield
    finally:
        job.evaluate = evaluate


def cache_bytes(cache: Path) -> int:
    """Disk the cache's decoded sets and objects take (sparse files count what they use)."""
    return sum(p.stat().st_blocks * 512 for part in ("decoded", "objects") for p in (cache / part).rglob("*")
               if p.is_file())


def main(out: str, data: str, cache: str, record: str) -> None:
    from flows.prune import prune_runs
    from flows.study import ratio_study
    from ratio_cnn.config import StudyConfig, StudyOptions
    from ratio_cnn.synth import make_synthetic_dataset

    sizes = []
    for night in range(1, NIGHTS + 1):
        if night in GROWTH:
            malignant, benign = GROWTH[night]
            make_synthetic_dataset(data, malignant=malignant, benign=benign, seed=3)  # same seed: the same first images
        options = StudyOptions(**TINY, cache=cache, cache_max_gb=CACHE_MAX_GB)
        with broken_release() if night == PLANTED_NIGHT else nullcontext():
            ratio_study(StudyConfig(ratios=[1], data=data, out=out, run_id=f"night-{night:02d}", options=options))
        sizes.append(cache_bytes(Path(cache)))
        if night % 7 == 0 or night == NIGHTS:
            prune_runs(out=out, **RETENTION)
    Path(record).write_text(json.dumps({"cache_bytes": sizes}))


if __name__ == "__main__":
    main(*sys.argv[1:])

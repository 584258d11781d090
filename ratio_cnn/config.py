"""Every setting of one training job, with its default and the reason for it.

The CLI (`ratio-cnn train`) and the Prefect flows both build a `TrainConfig`; nothing
else holds defaults.
"""
import math
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from ratio_cnn.errors import RatioCnnError

DEVICES = ("auto", "cpu", "cuda")


def new_run_id() -> str:
    """Sortable by time, unique across concurrent launches: 20261125-173000-1a2b."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def ratio_name(ratio: float) -> str:
    """3.0 -> '3', 2.5 -> '2.5': the N of `ratio-<N>` folders and `1:N` headings."""
    return f"{ratio:g}"


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    ratio: float = _opt(None, "benign training images per malignant one (the N of 1:N); required")
    data: str = _opt("data/synthetic", "dataset: a folder, file://… or s3://bucket/prefix holding manifest.csv")
    out: str = _opt("results", "where runs are written: <out>/<run-id>/ratio-<N>/")
    run_id: str = _opt(None, "run folder name; default: a new time-stamped id")
    # Training: the study's model and optimiser. 5 epochs: after that the training loss
    # keeps falling but validation ROC-AUC does not rise (33.5M weights, ~1-2k images;
    # measured on ISIC and synthetic data, see the README).
    epochs: int = _opt(5, "passes over the training set")
    batch_size: int = _opt(32, "images per optimiser step (the study's)")
    lr: float = _opt(1e-4, "Adam learning rate (the study's)")
    seed: int = _opt(0, "seed for weights and batch order; same seed on the CPU, same metrics")
    device: str = _opt("auto", "auto (cuda when present), cpu or cuda")
    threshold: float = _opt(0.5, "probability above which an image is called malignant")
    # Splits and sampling. The study's sizes: 293 training malignant images, and val and
    # test of 50 malignant + 1000 benign each, keeping the natural imbalance.
    train_malignant: int = _opt(293, "malignant training images (benign = ratio x this)")
    val_malignant: int = _opt(50, "malignant images in val (when the manifest has no split column)")
    val_benign: int = _opt(1000, "benign images in val (when the manifest has no split column)")
    test_malignant: int = _opt(50, "malignant images in test (when the manifest has no split column)")
    test_benign: int = _opt(1000, "benign images in test (when the manifest has no split column)")
    split_seed: int = _opt(0, "seed of the val/test split and of which images are sampled; fixed across ratios")
    # Data health.
    max_skipped: float = _opt(0.01, "share of undecodable images tolerated (skipped and counted) before the job fails")
    workers: int = _opt(16, "concurrent downloads")

    def __post_init__(self) -> None:
        if self.ratio is None or not (isinstance(self.ratio, (int, float)) and math.isfinite(self.ratio) and self.ratio > 0):
            raise RatioCnnError(f"ratio must be a positive number (such as 1, 2, 3 or 5), got {self.ratio!r}")
        if self.device not in DEVICES:
            raise RatioCnnError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        for name in ("epochs", "batch_size", "train_malignant", "workers"):
            if getattr(self, name) < 1:
                raise RatioCnnError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("val_malignant", "val_benign", "test_malignant", "test_benign"):
            if getattr(self, name) < 0:
                raise RatioCnnError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 < self.threshold < 1:
            raise RatioCnnError(f"threshold must lie between 0 and 1, got {self.threshold}")
        if not 0 <= self.max_skipped < 1:
            raise RatioCnnError(f"max_skipped is a share between 0 and 1, got {self.max_skipped}")
        if self.lr <= 0:
            raise RatioCnnError(f"lr must be positive, got {self.lr}")
        if self.train_benign < 1:
            raise RatioCnnError(f"ratio {self.ratio:g} x {self.train_malignant} malignant images rounds to no benign one: "
                                "raise --ratio or --train-malignant")
        if self.run_id is None:
            self.run_id = new_run_id()
        elif not self.run_id or "/" in self.run_id:
            raise RatioCnnError(f"run id {self.run_id!r} must be a non-empty name without '/'")

    @property
    def train_benign(self) -> int:
        return round(self.ratio * self.train_malignant)

    @property
    def job_prefix(self) -> str:
        """Where this job writes, relative to `out`."""
        return f"{self.run_id}/ratio-{ratio_name(self.ratio)}"

    def to_dict(self) -> dict:
        return asdict(self)

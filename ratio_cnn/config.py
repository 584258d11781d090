"""Every setting of a training job and of a study, each with its default and the reason for it.

`TrainConfig` is one job (`ratio-cnn train`, the `train-ratio` flow); `StudyConfig` is one
study (`python -m flows.study`, the `ratio-study` flow), which gives every job the same
`StudyOptions`. Nothing else holds a default: the command-line flags (cli.py), the Prefect
forms (pydantic reads these dataclasses and each field's `description`) and the README's
options tables are all made from the fields below.
"""
import math
import os
import re
import secrets
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar, Literal, get_args, get_origin

from ratio_cnn.errors import RatioCnnError
from ratio_cnn.storage import check_apart

# Names that become folders and object keys: no separators, no `.`/`..`, not too long for a file system.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def new_run_id() -> str:
    """Sortable by time, unique across concurrent launches: 20261125-173000-1a2b."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RatioCnnError(f"{what} {name!r} is not a valid name: use 1-100 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit (it becomes a folder name)")
    return name


def ratio_name(ratio: float) -> str:
    """3.0 -> '3', 2.5 -> '2.5': the N of `ratio-<N>` folders and `1:N` headings."""
    return f"{ratio:g}"


def parse_seeds(value) -> list[int]:
    """`5` -> seeds 0..4; `0,3,7` or [0, 3, 7] -> those seeds."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise RatioCnnError(f"seeds {value!r}: give a count (5 means seeds 0-4) or a comma list (0,3,7)") from None
        value = numbers if "," in value else (numbers[0] if numbers else None)
    if isinstance(value, bool) or value is None:
        raise RatioCnnError(f"seeds {value!r}: give a count (5 means seeds 0-4) or a comma list (0,3,7)")
    if isinstance(value, int):
        if not 1 <= value <= 1000:
            raise RatioCnnError(f"seeds must count between 1 and 1000 replicates, got {value} (a list names seeds: "
                                f"'{value},' is seed {value} alone)")
        return list(range(value))
    seeds = list(value)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise RatioCnnError(f"seeds {value!r} must be non-negative integers")
    if len(set(seeds)) < len(seeds):
        raise RatioCnnError(f"seeds {value!r} lists a seed twice: each replicate needs its own seed")
    return seeds


def parse_names(value) -> list[str]:
    """`none,pos_weight` or ['none', 'pos_weight'] -> ['none', 'pos_weight']."""
    names = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    return [n for n in names if n]


def parse_ratios(value) -> list[float]:
    """`1,2,3,5` or [1, 2, 3, 5] -> [1.0, 2.0, 3.0, 5.0]; each job checks its own."""
    parts = [p for p in value.split(",") if p.strip()] if isinstance(value, str) else list(value)
    try:
        ratios = [float(p) for p in parts]
    except (TypeError, ValueError):
        ratios = []
    if not ratios:
        raise RatioCnnError(f"ratios {value!r}: give a comma list of numbers, such as 1,2,3,5")
    return ratios


# The options that hold lists, and how a comma string (a flag, `--set`) becomes one: the one place
# where a comma list is parsed.
LIST_OPTIONS = {"seeds": parse_seeds, "strategies": parse_names, "models": parse_names, "ratios": parse_ratios,
                "subgroups": parse_names, "eval_data": parse_names}


def default_cache() -> str:
    return os.environ.get("RATIO_CNN_CACHE") or str(Path.home() / ".cache" / "ratio-cnn")


def _opt(default, description: str, **meta):
    """A field with its one-line description (the --help text and the Prefect form's); `shown` replaces
    the default where the value alone would not say it. A list default is copied for every instance."""
    metadata = {"description": description, **meta}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def field_default(f: Field):
    return f.default_factory() if f.default is MISSING else f.default


def normalise(config) -> None:
    """Comma lists into lists, and every choice (a `Literal` field) checked against its values."""
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in LIST_OPTIONS:
            setattr(config, f.name, LIST_OPTIONS[f.name](value))
        elif get_origin(f.type) is Literal and value not in get_args(f.type):
            raise RatioCnnError(f"{f.name} must be one of {', '.join(get_args(f.type))}, got {value!r}")


@dataclass
class TrainingOptions:
    """How a job trains: every setting of `ratio-cnn train` but which ratio, which data and where it writes."""

    __pydantic_config__ = {"extra": "forbid"}  # in a Prefect form or JSON parameters, a misspelt option is an error

    # Training: the study's model and optimiser. 5 epochs: after that the training loss keeps
    # falling but validation ROC-AUC does not rise (33.5M weights, ~1-2k images; the README's
    # "Why 5 epochs").
    epochs: int = _opt(5, "passes over the training set; more buy overfitting, not ranking (README, Why 5 epochs)")
    batch_size: int = _opt(32, "images per optimiser step (the study's)")
    lr: float = _opt(1e-4, "Adam learning rate (the study's, with BCEWithLogitsLoss)")
    # Replicates: one seed is the study's design; intervals need several (the report's
    # statistics). A seed changes the initial weights and the batch order, nothing else.
    # Given as a count or a list; a list of seeds once the options are built.
    seeds: int | list[int] = _opt([0], "replicates: a count (5 means seeds 0-4) or a comma list (0,3,7)",
                                  metavar="N|LIST")
    sample: Literal["fixed", "per-seed"] = _opt(
        "fixed", "fixed: every seed trains on the same sample (paired across ratios); "
        "per-seed: each seed redraws the training sample")
    # The allowed names live with what they mean (strategies.py, model.py); TrainConfig checks them.
    strategies: list[str] = _opt(["none"], "imbalance strategies to compare, a comma list (docs/strategies.md "
                                 "says what each does)", flag="--strategy", metavar="LIST")
    models: list[str] = _opt(["simple"], "architectures to compare, a comma list of model.py's MODELS (simple: "
                             "the study's SimpleCNN)", flag="--model", metavar="LIST")
    synthetic_malignant: int = _opt(3000, "extra malignant images the synthetic strategy makes (the study's 3,000)")
    # bf16 autocast and channels_last are faster on a GPU; on a CPU bf16 is several times slower
    # where it is emulated, so auto keeps fp32 there (docs/benchmarks.md measures both).
    device: Literal["auto", "cpu", "cuda"] = _opt("auto", "auto: CUDA when present")
    precision: Literal["auto", "fp32", "bf16"] = _opt(
        "auto", "auto: bf16 autocast, channels_last and fused Adam on CUDA, fp32 on a CPU")
    threshold: float = _opt(0.5, "probability above which an image is called malignant")
    eval_batch_size: int = _opt(0, "images per forward pass when evaluating; 0: 32 on a CPU, 256 on a GPU "
                                "(the faster on each, measured in docs/benchmarks.md)")
    # Splits and sampling. The study's sizes: 293 training malignant images, and val and
    # test of 50 malignant + 1000 benign each, keeping the natural imbalance.
    train_malignant: int = _opt(293, "malignant training images, the study's (benign = ratio x this)")
    val_malignant: int = _opt(50, "malignant images in val (when the manifest has no split column)")
    val_benign: int = _opt(1000, "benign images in val (when the manifest has no split column)")
    test_malignant: int = _opt(50, "malignant images in test (when the manifest has no split column)")
    test_benign: int = _opt(1000, "benign images in test (when the manifest has no split column)")
    split_seed: int = _opt(0, "seed of the val/test split and of which images are sampled; fixed across ratios")
    # Validity (issue 14): whether the ranking is of lesions or of what the data's other columns give away.
    group_by: str = _opt("", "a manifest column (near_dup_group, lesion_id, patient_id) whose every value stays "
                         "on one side of train/val/test", shown="none: each image is its own group")
    holdout: str = _opt("", "COL=VALUE: images with that value never train or validate; they are evaluated as a "
                        "set of their own (leave one source out)", shown="none", metavar="COL=VALUE")
    subgroups: list[str] = _opt([], "manifest columns whose values the report breaks the test results down by, a "
                                "comma list", shown="every column with 2-20 values in the test split", metavar="LIST")
    eval_data: list[str] = _opt([], "extra evaluation datasets, NAME=URI, a comma list: every model is also "
                                "evaluated on each, at thresholds chosen on its own val", shown="none",
                                flag="--eval-data", metavar="NAME=URI,…")
    # Data health.
    max_skipped: float = _opt(0.01, "share of undecodable images tolerated (skipped and counted) before the job fails")
    workers: int = _opt(16, "concurrent downloads")
    # Decode once: downloaded objects and decoded images are kept on this machine and
    # reused by every later job that reads the same objects (docs/benchmarks.md).
    cache: str = _opt("", "cache folder for downloaded and decoded images, reused by every later job; "
                      "'none' turns it off", shown="$RATIO_CNN_CACHE or ~/.cache/ratio-cnn")
    # A bucket that grows a little each night leaves a new decoded copy of the whole dataset each night:
    # the least recently used sets and objects go once the cache is over this (docs/operations.md).
    cache_max_gb: float = _opt(0.0, "size the cache is kept under, least recently used first; 0: a quarter of "
                               "the disk that holds it", shown="0 (a quarter of the disk)")
    # Weights are nearly all of a seed's bytes (134 MB of SimpleCNN's 140), and no number of the report
    # reads them (docs/operations.md measures both).
    save_models: Literal["all", "first", "none"] = _opt(
        "all", "which seeds keep their weights (model.pt, bf16): all, first (the first seed of every variant) "
        "or none; the report's numbers never depend on it")
    # Reliability (docs/reliability.md).
    resume: bool = _opt(False, "continue an interrupted or failed job of the same run id from its checkpoints")
    checkpoint_every: float = _opt(60.0, "seconds of training between checkpoints (0: after every epoch); a "
                                   "GPU epoch takes well under a second and a SimpleCNN checkpoint is 400 MB")
    storage_timeout: float = _opt(10.0, "seconds to wait for object storage to connect or answer (objects are small)")
    data_deadline: float = _opt(900.0, "seconds the whole download of the dataset may take before the job gives up")

    def __post_init__(self) -> None:
        normalise(self)
        for name in ("epochs", "batch_size", "train_malignant", "workers"):
            if getattr(self, name) < 1:
                raise RatioCnnError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("val_malignant", "val_benign", "test_malignant", "test_benign", "synthetic_malignant",
                     "eval_batch_size"):
            if getattr(self, name) < 0:
                raise RatioCnnError(f"{name} must not be negative, got {getattr(self, name)}")
        if not (math.isfinite(self.cache_max_gb) and self.cache_max_gb >= 0):
            raise RatioCnnError(f"cache_max_gb must be 0 (a quarter of the disk) or a positive size, got "
                                f"{self.cache_max_gb}")
        for name in ("lr", "storage_timeout", "data_deadline"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise RatioCnnError(f"{name} must be a positive number, got {getattr(self, name)}")
        if not (math.isfinite(self.checkpoint_every) and self.checkpoint_every >= 0):
            raise RatioCnnError(f"checkpoint_every must be 0 or more seconds, got {self.checkpoint_every}")
        if not 0 < self.threshold < 1:
            raise RatioCnnError(f"threshold must lie between 0 and 1, got {self.threshold}")
        if not 0 <= self.max_skipped < 1:
            raise RatioCnnError(f"max_skipped is a share between 0 and 1, got {self.max_skipped}")
        if self.holdout and ("=" not in self.holdout or not all(self.holdout.split("=", 1))):
            raise RatioCnnError(f"holdout {self.holdout!r}: give COL=VALUE, such as source=isic9class_amit")
        for item in self.eval_data:
            name, _, uri = item.partition("=")
            check_name("eval-data name", name)
            if not uri:
                raise RatioCnnError(f"eval-data {item!r}: give NAME=URI, such as external=s3://bucket/isic2020")
        names = [item.partition("=")[0] for item in self.eval_data]
        if len(set(names)) < len(names):
            raise RatioCnnError(f"eval-data names {', '.join(names)}: each extra set needs its own name")


@dataclass
class TrainConfig(TrainingOptions):
    """One job: a ratio, where it reads and writes, and how it trains (the fields above)."""

    ratio: float = _opt(None, "benign training images per malignant one (the N of 1:N)", required=True)
    data: str = _opt("data/synthetic", "dataset: a folder, file://… or s3://bucket/prefix holding manifest.csv")
    out: str = _opt("results", "where runs are written: <out>/<run-id>/ratio-<N>/")
    run_id: str | None = _opt(None, "run folder name", shown="a new time-stamped id")

    def __post_init__(self) -> None:
        if self.ratio is None or isinstance(self.ratio, bool) or not (
                isinstance(self.ratio, (int, float)) and math.isfinite(self.ratio) and self.ratio > 0):
            raise RatioCnnError(f"ratio must be a positive number (such as 1, 2, 3 or 5), got {self.ratio!r}")
        super().__post_init__()
        if self.train_benign < 1:
            raise RatioCnnError(f"ratio {self.ratio:g} x {self.train_malignant} malignant images rounds to no benign one: "
                                "raise --ratio or --train-malignant")
        # The allowed names live in strategies.py and model.py, which load torch (seconds): imported
        # here, after every other check: the CLI reports any other bad option without waiting for
        # torch, and TrainingOptions and StudyConfig are built without it.
        from ratio_cnn.model import MODELS
        from ratio_cnn.strategies import STRATEGIES

        for name, chosen, allowed in (("strategy", self.strategies, STRATEGIES), ("model", self.models, MODELS)):
            unknown = [c for c in chosen if c not in allowed]
            if not chosen or unknown or len(set(chosen)) < len(chosen):
                raise RatioCnnError(f"{name} {','.join(chosen) or '(none)'}: choose one or more of "
                                    f"{', '.join(allowed)}, each once")
        self.run_id = new_run_id() if self.run_id is None else check_name("run id", self.run_id)
        # Inputs are read-only: no job writes into a dataset it reads (docs/reliability.md).
        check_apart(self.data, self.out, "--data", "--out")
        for item in self.eval_data:
            check_apart(item.partition("=")[2], self.out, "--eval-data", "--out")

    @property
    def train_benign(self) -> int:
        return round(self.ratio * self.train_malignant)

    @property
    def job_prefix(self) -> str:
        """Where this job writes, relative to `out`."""
        return f"{self.run_id}/ratio-{ratio_name(self.ratio)}"

    @property
    def variants(self) -> list[tuple[str, str]]:
        """(strategy, model) pairs this job trains, each with every seed."""
        return [(s, m) for s in self.strategies for m in self.models]

    @property
    def cache_dir(self) -> Path | None:
        return None if self.cache == "none" else Path(self.cache or default_cache())

    def to_dict(self) -> dict:
        """The job's own fields first, then how it trains: metrics.json's and claim.json's order."""
        options = asdict(self)
        return {f.name: options.pop(f.name) for f in job_fields()} | options


def job_fields() -> list[Field]:
    """TrainConfig's own fields: which job, not how it trains."""
    shared = {f.name for f in fields(TrainingOptions)}
    return [f for f in fields(TrainConfig) if f.name not in shared]


@dataclass
class StudyOptions(TrainingOptions):
    """The training options a study gives every job: a job's own, with the study's replicates."""

    seeds: int | list[int] = _opt(5, "replicates of every job: a count or a comma list; the study's 5 give "
                                  "the report's intervals over seeds (one job's default is 1)", metavar="N|LIST")

    # `make study` sizes its jobs to the machine unless --epochs or --seeds says otherwise: on a
    # GPU the study's own 5 epochs and 5 seeds take seconds; on a 2-core CPU 4 ratios x 3 seeds x
    # 2 epochs fit in the command's 10-minute budget (measured, README).
    CPU_EPOCHS: ClassVar[int] = 2
    CPU_SEEDS: ClassVar[int] = 3

    @classmethod
    def for_machine(cls, on_gpu: bool) -> "StudyOptions":
        return cls() if on_gpu else cls(epochs=cls.CPU_EPOCHS, seeds=cls.CPU_SEEDS)


@dataclass
class StudyConfig:
    """One study: a job per ratio, side by side, into one run folder, then the report."""

    __pydantic_config__ = {"extra": "forbid"}

    ratios: list[float] = _opt([1, 2, 3, 5], "the N of each 1:N job: the study's four ratios", metavar="LIST")
    data: str = _opt(TrainConfig.data, "dataset of every job (`make study` makes it when it is the missing default)")
    out: str = _opt(TrainConfig.out, "where the run is written: <out>/<run-id>/, a folder per ratio and the report")
    run_id: str | None = _opt(None, "run folder name", shown="a new time-stamped id")
    launch: Literal["in-process", "deployments"] = _opt(
        "in-process", "in-process: every job in this process, side by side (no server, no worker); "
        "deployments: a run of train_deployment per ratio, each in its own container")
    train_deployment: str = _opt("train-ratio/gpu", "the deployment that trains one ratio when launch is "
                                 "deployments (deploy/prefect.yaml)")
    options: StudyOptions = field(default_factory=StudyOptions, metadata={
        "description": "the training options of every job: those of `ratio-cnn train`, with the study's seeds",
        "flag": "--set OPTION=VALUE", "shown": f"seeds {StudyOptions.seeds}, the rest as `ratio-cnn train`"})

    def __post_init__(self) -> None:
        normalise(self)
        if self.run_id is not None:
            check_name("run id", self.run_id)

    def job_configs(self, run_id: str) -> list[TrainConfig]:
        """Every ratio's job, each built and checked: a bad option stops the study before any job starts."""
        return [TrainConfig(ratio=ratio, data=self.data, out=self.out, run_id=run_id, **asdict(self.options))
                for ratio in self.ratios]


# Options that change how a job runs, not what it computes: they may differ when a job is resumed,
# and two runs that differ only in them are comparable (history.py).
OPERATIONAL = {"resume", "workers", "cache", "cache_max_gb", "checkpoint_every", "storage_timeout", "data_deadline",
               "device", "eval_batch_size", "save_models"}


# `ratio-cnn prune` with no policy given: two weeks of nightly runs stay whole, the newest three with
# their weights and predictions (enough to rebuild, compare and inspect the last few nights).
PRUNE_DEFAULTS = {"keep_last": 14, "keep_days": None, "keep_heavy": 3}


def variant_folder(strategy: str, model: str) -> str:
    """Where one (strategy, model) of a job writes, under ratio-<N>/: none/simple."""
    return f"{strategy}/{model}"

"""What the jobs of one run wrote, read back and checked: the report's only input.

A run folder `<out>/<run-id>/` holds `run.json` (what the study asked for, written by the
flow; optional) and one `ratio-<N>/` per job (job_folder.py has its layout). Anything that
is not what a job writes (unreadable JSON, missing fields, non-finite numbers, names that
leave the folder) is reported as a one-line error naming the object.
"""
import io
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ratio_cnn.config import NAME, ratio_name
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.host import JSON_MAX_BYTES, parse_json
from ratio_cnn.job_folder import CLAIM, ERROR, METRICS, owner_gone
from ratio_cnn import stats
from ratio_cnn.storage import Storage

RUN_FILE = "run.json"
LATEST = "latest.json"  # in <out>: the newest run whose every ratio finished (the study writes it)
PRUNED = "pruned.json"  # `ratio-cnn prune` writes it before it deletes anything from a run (retention.py)
RATIO_FOLDER = re.compile(r"ratio-([0-9]+(?:\.[0-9]+)?)/")
PREDICTION_COLUMNS = ("split", "image", "label", "logit", "probability")  # every column after these is metadata
EVAL_PREFIX = "eval:"  # predictions.csv's split of an extra evaluation set: `eval:<NAME>`
# metrics.json's costs (job.job_costs), each a count or seconds; the report sums them over a run's jobs.
COST_KEYS = ("wall_seconds", "data_seconds", "train_seconds", "eval_seconds", "device_seconds", "images_decoded",
             "objects_read", "bytes_read", "objects_written", "bytes_written")


@dataclass
class Variant:
    strategy: str
    model: str
    seeds: dict[int, dict]  # seed -> that seed's metrics.json (val, test, train counts and odds)

    @property
    def name(self) -> str:
        return f"{self.strategy}/{self.model}"


@dataclass
class RatioResult:
    ratio: float
    metrics: dict | None = None  # the job's metrics.json when it finished
    failure: str | None = None  # why not, when it did not
    variants: list[Variant] = field(default_factory=list)

    @property
    def folder(self) -> str:
        return f"ratio-{ratio_name(self.ratio)}"


def load_json(storage: Storage, key: str) -> dict:
    """A JSON object, read within bounds (host.parse_json: size, depth, no NaN or Infinity)."""
    try:
        value = parse_json(storage.get(key, max_bytes=JSON_MAX_BYTES))
    except ValueError as e:
        raise RatioCnnError(f"{storage.describe(key)} is not valid JSON ({e}): it was not written by ratio-cnn, "
                            "or was damaged; rerun that job or remove the file") from None
    if not isinstance(value, dict):
        raise RatioCnnError(f"{storage.describe(key)} holds no JSON object: rerun that job or remove the file")
    return value


def collect(run: Storage) -> tuple[dict, list[RatioResult]]:
    """Every ratio of the run: asked for in run.json, or found as a ratio-<N>/ folder."""
    meta = load_json(run, RUN_FILE) if run.exists(RUN_FILE) else {}
    asked = meta.get("ratios", [])
    if not isinstance(asked, list) or not all(_finite(r) and r > 0 for r in asked):
        raise RatioCnnError(f"{run.describe(RUN_FILE)} lists ratios {asked!r}: expected positive numbers")
    keys = run.list()
    # Only folders a job would have named so: `ratio-3`, not `ratio-3.0` or a number too long to be one.
    found = {float(m.group(1)) for k in keys if (m := RATIO_FOLDER.match(k)) and ratio_name(float(m.group(1))) == m.group(1)}
    ratios = sorted({r for r in found if r > 0} | {float(r) for r in asked})
    if not ratios:
        raise RatioCnnError(f"{run.uri} holds no ratio-<N>/ folders: is it a run folder (<out>/<run-id>)?")
    return meta, [read_ratio(run, ratio, set(keys)) for ratio in ratios]


def read_ratio(run: Storage, ratio: float, keys: set[str]) -> RatioResult:
    result = RatioResult(ratio)
    folder = result.folder
    if f"{folder}/{METRICS}" in keys:
        result.metrics = check_job_metrics(load_json(run, f"{folder}/{METRICS}"), run.describe(f"{folder}/{METRICS}"))
        for v in result.metrics["variants"]:
            seeds = {int(s): m for s, m in v["seeds"].items()}
            result.variants.append(Variant(v["strategy"], v["model"], seeds))
    elif f"{folder}/{ERROR}" in keys:
        error = load_json(run, f"{folder}/{ERROR}")
        result.failure = str(error.get("error", "no reason recorded"))[:1000]
    elif f"{folder}/{CLAIM}" in keys:
        claim = load_json(run, f"{folder}/{CLAIM}")
        if owner_gone(claim):
            result.failure = (f"the job stopped without a word (last heartbeat {claim.get('heartbeat')}): it was "
                              "killed; continue it with `ratio-cnn train … --resume`")
        else:
            result.failure = f"still running (last heartbeat {claim.get('heartbeat')}): rebuild the report when it ends"
    else:
        result.failure = "no job wrote anything in its folder: it never started"
    return result


def check_job_metrics(m: dict, where: str) -> dict:
    """The fields the report reads, of the right kind, finite; else one line naming the file."""
    def bad(what: str):
        return RatioCnnError(f"{where} {what}: it was not written by this version of ratio-cnn, or was damaged; "
                             "rerun that job or remove the file")

    try:
        counts = m["data"]["counts"]
        for split in ("train", "val", "test"):
            if not all(isinstance(counts[split][c], int) for c in ("malignant", "benign")):
                raise bad(f"has non-integer counts for {split}")
        if not isinstance(m["config"], dict) or not isinstance(m["variants"], list) or not m["variants"]:
            raise bad("lacks its configuration or variants")
        check_validity_keys(m, bad)
        for v in m["variants"]:
            if not all(isinstance(v[k], str) and NAME.fullmatch(v[k]) for k in ("strategy", "model")):
                raise bad(f"names a variant {v['strategy']!r}/{v['model']!r} that is no folder name")
            if not isinstance(v["seeds"], dict) or not v["seeds"]:
                raise bad(f"lists no seeds for {v['strategy']}/{v['model']}")
            for seed, sm in v["seeds"].items():
                if not str(seed).isdigit():
                    raise bad(f"names a seed {seed!r}")
                for split in ("val", "test"):
                    for name in stats.METRICS:
                        value = sm[split][name]
                        if not (value is None and name in ("roc_auc", "average_precision")) and not _finite(value):
                            raise bad(f"has {split} {name} {value!r} for seed {seed}")
                if not (_finite(sm["train"]["odds"]) and sm["train"]["odds"] > 0):
                    raise bad(f"has training odds {sm['train']['odds']!r} for seed {seed}")
                for name in m["data"].get("eval_sets", {}):
                    for metric in stats.METRICS:
                        value = sm["eval"][name][metric]
                        if not (value is None and metric in ("roc_auc", "average_precision")) and not _finite(value):
                            raise bad(f"has {name} {metric} {value!r} for seed {seed}")
        costs = m.get("costs", {})  # jobs before the costs have none
        if not isinstance(costs, dict) or not all(_finite(costs[k]) and costs[k] >= 0 for k in COST_KEYS if k in costs):
            raise bad("has costs that are not non-negative numbers")
    except RatioCnnError:
        raise
    except (KeyError, TypeError, AttributeError) as e:
        raise bad(f"lacks {e}") from None
    return m


def check_validity_keys(m: dict, bad) -> None:
    """The keys jobs write since the validity checks, of the right kind; older jobs lack them all."""
    data = m["data"]
    for where, names in (("config.subgroups", m["config"].get("subgroups", [])),
                         ("data.columns", data.get("columns", []))):
        if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
            raise bad(f"has {where} {names!r}: expected a list of column names")
    for column, values in data.get("train_values", {}).items():
        if not all(_count(c["malignant"]) and _count(c["benign"]) for c in values.values()):
            raise bad(f"has training counts for {column!r} that are not whole numbers")
    split = data.get("split")
    if split is not None:
        if not isinstance(split["rule"], str) or not all(split.get(k) is None or isinstance(split[k], str)
                                                         for k in ("group_by", "holdout")):
            raise bad(f"has data.split {split!r}: expected a rule, and group_by and holdout as names or null")
        twins = split.get("near_duplicates")
        if twins is not None and not (isinstance(twins["column"], str) and isinstance(twins["grouped"], bool) and
                                      _count(twins["test_with_twin_in_train"]) and _count(twins["val_with_twin_in_train"])):
            raise bad(f"has data.split.near_duplicates {twins!r}: expected a column, two counts and grouped")
    for name, described in data.get("eval_sets", {}).items():
        if not (isinstance(described["uri"], str) and _count(described["overlap_with_train"])
                and all(_count(described["counts"][c]) and described["counts"][c] > 0 for c in ("malignant", "benign"))
                and (described.get("overlap_note") is None or isinstance(described["overlap_note"], str))):
            raise bad(f"describes the evaluation set {name!r} without a uri, both classes' counts or its overlap")


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Predictions:
    """One variant's logits on one split, aligned by image (columns) and seed (rows)."""
    images: list[str]
    labels: np.ndarray  # (n,) 0/1
    logits: np.ndarray  # (S, n)
    seeds: list[int]
    metadata: dict[str, np.ndarray] = field(default_factory=dict)  # column -> (n,) strings, "" where missing

    def subset(self, seeds: list[int], images: list[str]) -> "Predictions":
        rows = [self.seeds.index(s) for s in seeds]
        position = {name: i for i, name in enumerate(self.images)}
        columns = [position[name] for name in images]
        return Predictions(images, self.labels[columns], self.logits[np.ix_(rows, columns)], seeds,
                           {c: values[columns] for c, values in self.metadata.items()})

    def where(self, mask: np.ndarray) -> "Predictions":
        """The images where mask (n,) is true, every seed."""
        return Predictions([n for n, kept in zip(self.images, mask) if kept], self.labels[mask],
                           self.logits[:, mask], self.seeds, {c: v[mask] for c, v in self.metadata.items()})


def load_predictions(run: Storage, result: RatioResult, variant: Variant, split: str) -> Predictions:
    """`split` is val, test or `eval:<NAME>`; the metadata columns are the first seed's."""
    images = labels = metadata = None
    rows = []
    for seed in sorted(variant.seeds):
        key = f"{result.folder}/{variant.name}/seed-{seed}/predictions.csv"
        try:
            raw = run.get(key)
            df = pd.read_csv(io.BytesIO(raw), dtype={"split": str, "image": str, "label": str})
            in_split = (df["split"] == split).to_numpy()
            df = df[in_split]
            logits = df["logit"].to_numpy(dtype=np.float64)
            seed_labels = df["label"].map({"malignant": 1, "benign": 0}).to_numpy()
            if metadata is None:
                metadata = read_metadata(raw, in_split, [c for c in df.columns if c not in PREDICTION_COLUMNS])
        except (ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise RatioCnnError(f"{run.describe(key)} is not a predictions.csv ratio-cnn wrote ({e}): "
                                "rerun that job") from None
        if df.empty or not np.isfinite(logits).all() or np.isnan(seed_labels.astype(float)).any():
            raise RatioCnnError(f"{run.describe(key)} has no {split} rows, or labels other than malignant|benign, "
                                "or non-finite logits: rerun that job")
        names = list(df["image"])
        if images is None:
            images, labels = names, seed_labels.astype(int)
        elif names != images:
            raise RatioCnnError(f"{run.describe(key)} lists other {split} images than seed {min(variant.seeds)}: "
                                "the seeds of one job share val and test; rerun that job")
        rows.append(logits)
    return Predictions(images, labels, np.stack(rows), sorted(variant.seeds), metadata)


def read_metadata(raw: bytes, rows: np.ndarray, columns: list[str]) -> dict[str, np.ndarray]:
    """predictions.csv's metadata columns at `rows` (a mask), as the strings the job wrote: "" stays ""."""
    if not columns:
        return {}
    df = pd.read_csv(io.BytesIO(raw), usecols=columns, dtype=str, keep_default_na=False)
    return {c: df[c].to_numpy(dtype=str)[rows] for c in columns}

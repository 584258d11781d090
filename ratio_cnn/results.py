"""What the jobs of one run wrote, read back and checked: the report's only input.

A run folder `<out>/<run-id>/` holds `run.json` (what the study asked for, written by the
flow; optional) and one `ratio-<N>/` per job (job_folder.py has its layout). Anything that
is not what a job writes (unreadable JSON, missing fields, non-finite numbers, names that
leave the folder) is reported as a one-line error naming the object.
"""
import io
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ratio_cnn.config import NAME, ratio_name
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.job_folder import CLAIM, ERROR, METRICS, owner_gone
from ratio_cnn import stats
from ratio_cnn.storage import Storage

RUN_FILE = "run.json"
RATIO_FOLDER = re.compile(r"ratio-([0-9]+(?:\.[0-9]+)?)/")


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
    """A JSON object, refusing NaN and Infinity (json.loads accepts them)."""
    def refuse(constant):
        raise ValueError(f"non-finite number {constant}")

    try:
        value = json.loads(storage.get(key), parse_constant=refuse)
    except (ValueError, UnicodeDecodeError) as e:
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
    except RatioCnnError:
        raise
    except (KeyError, TypeError, AttributeError) as e:
        raise bad(f"lacks {e}") from None
    return m


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Predictions:
    """One variant's logits on one split, aligned by image (columns) and seed (rows)."""
    images: list[str]
    labels: np.ndarray  # (n,) 0/1
    logits: np.ndarray  # (S, n)
    seeds: list[int]

    def subset(self, seeds: list[int], images: list[str]) -> "Predictions":
        rows = [self.seeds.index(s) for s in seeds]
        position = {name: i for i, name in enumerate(self.images)}
        columns = [position[name] for name in images]
        return Predictions(images, self.labels[columns], self.logits[np.ix_(rows, columns)], seeds)


def load_predictions(run: Storage, result: RatioResult, variant: Variant, split: str) -> Predictions:
    images = labels = None
    rows = []
    for seed in sorted(variant.seeds):
        key = f"{result.folder}/{variant.name}/seed-{seed}/predictions.csv"
        try:
            df = pd.read_csv(io.BytesIO(run.get(key)), dtype={"split": str, "image": str, "label": str})
            df = df[df["split"] == split]
            logits = df["logit"].to_numpy(dtype=np.float64)
            seed_labels = df["label"].map({"malignant": 1, "benign": 0}).to_numpy()
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
    return Predictions(images, labels, np.stack(rows), sorted(variant.seeds))

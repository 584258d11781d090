"""The refactor guard: a fixed tiny CPU study gives the outputs recorded in tests/unchanged.json.

Two ratios, two seeds, two strategies, trained in this process on one thread, then the report.
Compared: every prediction (names and labels exactly, logits within 5e-3), every seed's metrics,
each ratio's data summary, and the report's text and numbers (but its title and Costs section).
Not covered: timings and costs, the environment, weights, and metrics.json's per-variant summary.

Why tolerances and not digests: CPUs round differently. The same code on one machine gives logits
up to 4e-4 apart under its AVX-512, AVX2 and SSE4.1 kernels (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA),
and losses 6e-5 apart; byte digests recorded on one CPU failed on CI's. Anything a change in
behaviour moves (a split, a seed, a loss, an epoch) moves logits by far more than 5e-3. The margins
that matter: the smallest |logit| is 0.013 (no confusion matrix flips) and the closest malignant-benign
pair is 0.0024 apart (no ranking flips).

History: digests recorded from the code before the refactor of issue 13 (commit 9ec68ea); issue 14
moved them on purpose (splits by image identity; the report's split statement and validity
sections); issue 16 moved nothing. These values were recorded from that code (CI had matched its
digests for every prediction). A change that means to move them replaces tests/unchanged.json with
the file the failing test writes, in the same commit, and says why.
"""
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.storage import report_numbers
from ratio_cnn.config import TrainConfig
from ratio_cnn.job import run_job
from ratio_cnn.report import write_report

TINY = dict(epochs=1, batch_size=16, train_malignant=12, val_malignant=6, val_benign=20, test_malignant=6,
            test_benign=20, device="cpu", seeds=[0, 1], strategies=["none", "pos_weight"], cache="none")
RECORDED = Path(__file__).with_name("unchanged.json")
LOGIT_TOLERANCE = 5e-3
METRIC_TOLERANCE = 2e-3
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums split over another number of threads round differently
    yield
    torch.set_num_threads(before)


def study_outputs(data: Path, out: Path) -> dict:
    """What the guard compares, from a tiny study trained now."""
    for ratio in (1, 2):
        run_job(TrainConfig(ratio=ratio, data=str(data), out=str(out), run_id="fixed", **TINY))
    run = out / "fixed"
    found = {"predictions": {}, "seeds": {}, "ratios": {}}
    for path in sorted(run.rglob("predictions.csv")):
        table = pd.read_csv(path)
        found["predictions"][str(path.relative_to(run))] = {
            "rows": [" ".join(row) for row in table[["split", "image", "label"]].itertuples(index=False)],
            "logits": [round(x, 6) for x in table["logit"]]}
    for path in sorted(run.glob("ratio-*/*/*/seed-*/metrics.json")):
        metrics = json.loads(path.read_text())
        metrics.pop("timings")
        found["seeds"][str(path.relative_to(run))] = metrics
    for path in sorted(run.glob("ratio-*/metrics.json")):
        metrics = json.loads(path.read_text())
        found["ratios"][str(path.relative_to(run))] = {
            k: metrics["data"][k] for k in ("counts", "manifest_digest", "skipped_images", "sample")}
    found["report"] = report_numbers(write_report(str(run)).markdown.replace(str(data), "DATA"))
    return found


def differences(found, expected, where: str, tolerance: float) -> list[str]:
    """Where `found` differs from `expected`: numbers by more than `tolerance`, anything else at all."""
    if isinstance(expected, dict) and isinstance(found, dict):
        if found.keys() != expected.keys():
            return [f"{where}: keys {sorted(found)} != {sorted(expected)}"]
        return [d for k in expected for d in differences(found[k], expected[k], f"{where}.{k}", tolerance)]
    if isinstance(expected, list) and isinstance(found, list):
        if len(found) != len(expected):
            return [f"{where}: {len(found)} items != {len(expected)}"]
        return [d for i, (f, e) in enumerate(zip(found, expected)) for d in differences(f, e, f"{where}[{i}]", tolerance)]
    if isinstance(expected, float) and isinstance(found, (int, float)) and not isinstance(found, bool):
        return [] if math.isclose(found, expected, rel_tol=0, abs_tol=tolerance) else [f"{where}: {found} != {expected}"]
    return [] if found == expected else [f"{where}: {found!r} != {expected!r}"]


def report_differences(found: str, expected: str) -> list[str]:
    """The report's text and counts exactly; each decimal within a unit of its last digit or 5e-3 + 0.1%
    (intervals over two seeds multiply a loss's rounding by t = 12.7)."""
    if NUMBER.sub("#", found) != NUMBER.sub("#", expected):
        return ["report: the text differs (numbers aside)"]
    out = []
    for f, e in zip(NUMBER.findall(found), NUMBER.findall(expected)):
        decimals = len(e.split(".")[1]) if "." in e else 0
        value = float(e.replace(",", ""))
        allowed = max(1.01 * 10 ** -decimals, 5e-3 + 1e-3 * abs(value)) if decimals else 0
        if abs(float(f.replace(",", "")) - value) > allowed:
            out.append(f"report: {f} != {e}")
    return out


def test_a_fixed_tiny_study_gives_the_recorded_outputs(small_dataset, tmp_path, one_thread):
    found = study_outputs(small_dataset, tmp_path / "out")
    expected = json.loads(RECORDED.read_text())
    problems = [*differences(found["predictions"], expected["predictions"], "predictions", LOGIT_TOLERANCE),
                *differences(found["seeds"], expected["seeds"], "seeds", METRIC_TOLERANCE),
                *differences(found["ratios"], expected["ratios"], "ratios", 0.0),
                *report_differences(found["report"], expected["report"])]
    if problems:
        (tmp_path / "unchanged.json").write_text(json.dumps(found, indent=1) + "\n")
    assert not problems, (f"{len(problems)} outputs moved, first: {problems[:5]}; what this code gives is in "
                          f"{tmp_path / 'unchanged.json'}")


def test_the_guard_sees_a_moved_logit_and_a_moved_report_number():
    """The comparison itself: CPU-sized noise passes, a change in behaviour does not."""
    expected = {"predictions": {"a": {"rows": ["val x benign"], "logits": [0.5]}}}
    assert not differences({"predictions": {"a": {"rows": ["val x benign"], "logits": [0.5004]}}}, expected, "", 5e-3)
    assert differences({"predictions": {"a": {"rows": ["val x benign"], "logits": [0.51]}}}, expected, "", 5e-3)
    assert differences({"predictions": {"a": {"rows": ["val y benign"], "logits": [0.5]}}}, expected, "", 5e-3)
    assert not report_differences("| 1:1 | 0.712 | 1,050 |", "| 1:1 | 0.713 | 1,050 |")
    assert report_differences("| 1:1 | 0.702 | 1,050 |", "| 1:1 | 0.713 | 1,050 |")
    assert report_differences("| 1:2 | 0.713 | 1,050 |", "| 1:1 | 0.713 | 1,050 |")
    assert report_differences("| 1:1 | 0.713 | 1,051 |", "| 1:1 | 0.713 | 1,050 |")

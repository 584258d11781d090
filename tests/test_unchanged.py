"""The refactor guard: a fixed tiny CPU study gives byte-identical outputs to the code it replaced.

Two ratios, two seeds, two strategies, trained in this process on one thread, then the report.
The digests were first recorded from the code before the refactor of issue 13 (commit 9ec68ea),
which left them unchanged; issue 14 moved them on purpose (splits by image identity instead of
row order; the report's split statement and validity sections). A change that means to move
these numbers updates them in the same commit and says why.
Not covered: timings and costs (the report's Costs section too), the environment, and
metrics.json's per-variant summary, whose interval rule was unified with the report's on purpose.
Issue 16 moved nothing here: weights are not digested (they are stored in bf16 since).
"""
import hashlib
import json

import pytest
import torch

from bench.storage import report_numbers
from ratio_cnn.config import TrainConfig
from ratio_cnn.job import run_job
from ratio_cnn.report import write_report

TINY = dict(epochs=1, batch_size=16, train_malignant=12, val_malignant=6, val_benign=20, test_malignant=6,
            test_benign=20, device="cpu", seeds=[0, 1], strategies=["none", "pos_weight"], cache="none")
EXPECTED = {
    "ratio-1/none/simple/seed-0/predictions.csv": "9c257d8695220364",
    "ratio-1/none/simple/seed-1/predictions.csv": "1f9c3d08a927ffe5",
    "ratio-1/pos_weight/simple/seed-0/predictions.csv": "9c257d8695220364",
    "ratio-1/pos_weight/simple/seed-1/predictions.csv": "1f9c3d08a927ffe5",
    "ratio-2/none/simple/seed-0/predictions.csv": "b1df8cab311152d4",
    "ratio-2/none/simple/seed-1/predictions.csv": "afc2021d06fbd538",
    "ratio-2/pos_weight/simple/seed-0/predictions.csv": "f98fa74182dbddb4",
    "ratio-2/pos_weight/simple/seed-1/predictions.csv": "8bf70e7c87ed30df",
    "ratio-1/none/simple/seed-0/metrics.json": "639626b5c351c56d",
    "ratio-1/none/simple/seed-1/metrics.json": "fb8c1eb4fd76c88f",
    "ratio-1/pos_weight/simple/seed-0/metrics.json": "21b60fac27927c25",
    "ratio-1/pos_weight/simple/seed-1/metrics.json": "c0240f3bb161e567",
    "ratio-2/none/simple/seed-0/metrics.json": "1760f682fa7a6092",
    "ratio-2/none/simple/seed-1/metrics.json": "224f40ac2600daf9",
    "ratio-2/pos_weight/simple/seed-0/metrics.json": "a57735d452201373",
    "ratio-2/pos_weight/simple/seed-1/metrics.json": "7ca857ab716b54a0",
    "ratio-1/metrics.json": "f4dbff38d38e6dec",
    "ratio-2/metrics.json": "c82a7f5b3f762026",
    "report.md": "51e0e33dce129e10",
}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums split over another number of threads round differently
    yield
    torch.set_num_threads(before)


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def test_a_fixed_tiny_study_gives_the_recorded_outputs(small_dataset, tmp_path, one_thread):
    out = tmp_path / "out"
    for ratio in (1, 2):
        run_job(TrainConfig(ratio=ratio, data=str(small_dataset), out=str(out), run_id="fixed", **TINY))
    run = out / "fixed"
    found = {}
    for path in sorted(run.rglob("predictions.csv")):
        found[str(path.relative_to(run))] = digest(path.read_bytes())
    for path in sorted(run.glob("ratio-*/*/*/seed-*/metrics.json")):
        metrics = json.loads(path.read_text())
        metrics.pop("timings")
        found[str(path.relative_to(run))] = digest(json.dumps(metrics, sort_keys=True).encode())
    for path in sorted(run.glob("ratio-*/metrics.json")):
        metrics = json.loads(path.read_text())
        kept = {"data": {k: metrics["data"][k] for k in ("counts", "manifest_digest", "skipped_images", "sample")},
                "seeds": [v["seeds"] for v in metrics["variants"]]}
        for seeds in kept["seeds"]:
            for m in seeds.values():
                m.pop("timings")
        found[str(path.relative_to(run))] = digest(json.dumps(kept, sort_keys=True).encode())
    report = write_report(str(run)).markdown.replace(str(small_dataset), "DATA")
    found["report.md"] = digest(report_numbers(report).encode())  # but the title line and the Costs (seconds)
    print(json.dumps(found, indent=1))
    assert found == EXPECTED

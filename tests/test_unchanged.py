"""The refactor guard: a fixed tiny CPU study gives byte-identical outputs to the code it replaced.

Two ratios, two seeds, two strategies, trained in this process on one thread, then the report.
The digests were recorded from the code before the refactor of issue 13 (commit 9ec68ea);
a change that means to move these numbers updates them in the same commit and says why.
Not covered: timings, the environment, and metrics.json's per-variant summary, whose
interval rule was unified with the report's on purpose.
"""
import hashlib
import json

import pytest
import torch

from ratio_cnn.config import TrainConfig
from ratio_cnn.job import run_job
from ratio_cnn.report import write_report

TINY = dict(epochs=1, batch_size=16, train_malignant=12, val_malignant=6, val_benign=20, test_malignant=6,
            test_benign=20, device="cpu", seeds=[0, 1], strategies=["none", "pos_weight"], cache="none")
EXPECTED = {
    "ratio-1/none/simple/seed-0/predictions.csv": "c3e38e66314d0ba5",
    "ratio-1/none/simple/seed-1/predictions.csv": "a4e5323dc0fbd97d",
    "ratio-1/pos_weight/simple/seed-0/predictions.csv": "c3e38e66314d0ba5",
    "ratio-1/pos_weight/simple/seed-1/predictions.csv": "a4e5323dc0fbd97d",
    "ratio-2/none/simple/seed-0/predictions.csv": "2855ed2e64a76dc7",
    "ratio-2/none/simple/seed-1/predictions.csv": "54097dbdb002fdfb",
    "ratio-2/pos_weight/simple/seed-0/predictions.csv": "95c3f2a16ca67d18",
    "ratio-2/pos_weight/simple/seed-1/predictions.csv": "fa6934ea284a8de4",
    "ratio-1/none/simple/seed-0/metrics.json": "d9cc33a665cf2220",
    "ratio-1/none/simple/seed-1/metrics.json": "435e2a6f17a60a4d",
    "ratio-1/pos_weight/simple/seed-0/metrics.json": "291b7c605424cb9c",
    "ratio-1/pos_weight/simple/seed-1/metrics.json": "45c468552c978997",
    "ratio-2/none/simple/seed-0/metrics.json": "2971bd2b2e29f635",
    "ratio-2/none/simple/seed-1/metrics.json": "2118d578b94802ab",
    "ratio-2/pos_weight/simple/seed-0/metrics.json": "67e4a9a7d9c58cea",
    "ratio-2/pos_weight/simple/seed-1/metrics.json": "021acda6ee2332f8",
    "ratio-1/metrics.json": "5312854e6f14b4ab",
    "ratio-2/metrics.json": "aebc1cb0a0278a44",
    "report.md": "e03de9e7ca726d02",
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
    found["report.md"] = digest(report.split("\n", 2)[2].encode())  # below the title line
    print(json.dumps(found, indent=1))
    assert found == EXPECTED

"""What a night costs: weights kept by --save-models in bf16, the report's numbers the same whichever
are kept, and every job's costs in metrics.json, the report and the index."""
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from PIL import Image

from bench.storage import report_numbers
from ratio_cnn.config import TrainConfig
from ratio_cnn.evaluate import predict
from ratio_cnn.job import run_job
from ratio_cnn.model import SimpleCNN
from ratio_cnn.report import write_report
from ratio_cnn.results import COST_KEYS
from ratio_cnn.retention import Policy, prune
from runs import noisy_logits, write_job

TINY = dict(epochs=1, batch_size=16, train_malignant=12, val_malignant=6, val_benign=20, test_malignant=6,
            test_benign=20, device="cpu", seeds=[0, 1], cache="none")


@pytest.fixture(scope="module")
def runs(small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    for keep in ("all", "first", "none"):  # each in an output folder of its own: no run compares with another
        run_job(TrainConfig(ratio=1, data=str(small_dataset), out=str(out / keep), run_id="night", save_models=keep,
                            **TINY))
    return out


def test_save_models_keeps_the_weights_it_says_and_the_report_numbers_do_not_move(runs):
    weights = {keep: sorted(p.parent.name for p in (runs / keep / "night").rglob("model.pt"))
               for keep in ("all", "first", "none")}
    assert weights == {"all": ["seed-0", "seed-1"], "first": ["seed-0"], "none": []}
    reports = {keep: write_report(str(runs / keep / "night")).markdown for keep in ("all", "first", "none")}
    assert report_numbers(reports["first"]) == report_numbers(reports["all"]) == report_numbers(reports["none"])
    written = {keep: json.loads((runs / keep / "night" / "ratio-1" / "metrics.json").read_text())["costs"]
               ["bytes_written"] for keep in ("all", "first", "none")}
    assert written["none"] < 0.01 * written["all"] and 0.45 * written["all"] < written["first"] < 0.55 * written["all"]


def test_bf16_weights_reload_into_the_model_and_give_the_recorded_probabilities(runs, small_dataset):
    seed = runs / "first" / "night" / "ratio-1" / "none" / "simple" / "seed-0"
    state = torch.load(io.BytesIO((seed / "model.pt").read_bytes()), weights_only=True)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.bfloat16}
    model = SimpleCNN()
    model.load_state_dict(state)  # cast back to fp32
    model.eval()
    predictions = pd.read_csv(seed / "predictions.csv")
    test = predictions[predictions["split"] == "test"]
    images = torch.stack([torch.from_numpy(np.array(Image.open(small_dataset / name).convert("RGB"))).permute(2, 0, 1)
                          for name in test["image"]])
    probabilities = torch.sigmoid(predict(model, images, 32)).numpy()
    assert np.abs(probabilities - test["probability"].to_numpy()).max() < 0.01


def test_costs_are_recorded_per_job_and_summed_in_the_report_and_index(runs):
    metrics = json.loads((runs / "all" / "night" / "ratio-1" / "metrics.json").read_text())
    costs = metrics["costs"]
    assert set(COST_KEYS) <= set(costs) and costs["device"] == "cpu"
    seeds = [m["timings"] for m in metrics["variants"][0]["seeds"].values()]
    assert costs["train_seconds"] == pytest.approx(sum(t["train_seconds"] for t in seeds))
    assert costs["device_seconds"] == pytest.approx(costs["train_seconds"] + costs["eval_seconds"])
    assert 0 < costs["data_seconds"] < costs["wall_seconds"]
    manifest_and_images = 1 + sum(c["malignant"] + c["benign"] for c in metrics["data"]["counts"].values())
    assert costs["objects_read"] == manifest_and_images and costs["images_decoded"] == manifest_and_images - 1
    on_disk = sum(p.stat().st_size for p in (runs / "all" / "night" / "ratio-1").rglob("*")
                  if p.is_file() and p.name not in ("metrics.json", "claim.json"))
    # every output (the seeds' metrics.json too) but the job's own metrics.json and the claim's rewrites
    seed_metrics = sum(p.stat().st_size for p in (runs / "all" / "night" / "ratio-1").rglob("seed-*/metrics.json"))
    assert on_disk + seed_metrics <= costs["bytes_written"] <= on_disk + seed_metrics + 20_000
    written = write_report(str(runs / "all" / "night"))
    assert "## Costs" in written.markdown and "| **run** | cpu |" in written.markdown
    row = next(line for line in written.index.splitlines() if "`night`" in line)
    assert f"{costs['device_seconds']:.0f} s cpu" in row and f"{costs['bytes_written'] / 1e6:,.1f} MB" in row


def test_a_pruned_run_keeps_its_report_and_is_not_compared_with(tmp_path):
    """After prune took a run's predictions, `ratio-cnn report` keeps the report it has (and rebuilds the
    index), and the next run's comparison skips it for an earlier run that still holds them."""
    for run in ("a", "b", "c"):
        write_job(tmp_path / run, 1, {s: (noisy_logits(s, 3.0), noisy_logits(10 + s, 3.0)) for s in (0, 1)})
    for run in ("a", "b"):
        write_report(str(tmp_path / run))
    prune(str(tmp_path), Policy(keep_last=5, keep_days=None, keep_heavy=1))  # b is newest: a loses its predictions
    assert not list((tmp_path / "a").rglob("predictions.csv")) and (tmp_path / "a" / "pruned.json").is_file()
    before = (tmp_path / "a" / "report.md").read_text()
    (tmp_path / "index.md").unlink()
    again = write_report(str(tmp_path / "a"))
    assert again.markdown == before == (tmp_path / "a" / "report.md").read_text()
    assert "`a`" in (tmp_path / "index.md").read_text()
    assert write_report(str(tmp_path / "c")).previous_run == "b"
    prune(str(tmp_path), Policy(keep_last=5, keep_days=None, keep_heavy=1))  # c is newest now: b goes light
    (tmp_path / "c" / "summary.json").unlink()
    assert write_report(str(tmp_path / "c")).previous_run is None  # a and b were pruned: nothing to pair with

"""Replicates: a seed's results do not depend on what else runs in the process, and each seed
writes its own outputs under ratio-<N>/<strategy>/<model>/seed-<s>/."""
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from ratio_cnn.config import TrainConfig
from ratio_cnn.job import run_job

pytestmark = pytest.mark.slow

SMALL = dict(epochs=1, batch_size=16, train_malignant=12, val_malignant=6, val_benign=20, test_malignant=6,
             test_benign=20, device="cpu", models="simple,upgraded")


def seed_metrics(out, run_id: str, ratio: int, variant: str, seed: int) -> dict:
    return json.loads((out / run_id / f"ratio-{ratio}" / variant / f"seed-{seed}" / "metrics.json").read_text())


def test_seeds_give_the_same_cpu_metrics_alone_and_beside_other_jobs(small_dataset, tmp_path):
    out = tmp_path / "out"
    base = dict(data=str(small_dataset), out=str(out), **SMALL)
    stop = threading.Event()

    def hammer_the_global_rng():  # what any other library code in the process may do
        while not stop.is_set():
            torch.manual_seed(int(torch.randint(0, 1000, ())))
            torch.rand(64)

    noise = threading.Thread(target=hammer_the_global_rng, daemon=True)
    noise.start()
    try:
        with ThreadPoolExecutor(2) as pool:  # as the in-process study runs its ratios
            list(pool.map(lambda r: run_job(TrainConfig(ratio=r, run_id="together", seeds=[0, 1], **base)), (1, 2)))
    finally:
        stop.set()
        noise.join()
    run_job(TrainConfig(ratio=1, run_id="alone", seeds=[1], **base))

    for variant in ("none/simple", "none/upgraded"):  # upgraded has dropout: its masks too are the seed's own
        together, alone = (seed_metrics(out, run, 1, variant, 1) for run in ("together", "alone"))
        assert together["val"] == alone["val"] and together["test"] == alone["test"], variant
    # Different seeds do differ, and each ratio wrote its own seeds.
    assert seed_metrics(out, "together", 1, "none/simple", 0)["test"] != seed_metrics(out, "together", 1,
                                                                                       "none/simple", 1)["test"]
    job = json.loads((out / "together" / "ratio-2" / "metrics.json").read_text())
    assert [(v["strategy"], v["model"], sorted(v["seeds"])) for v in job["variants"]] == [
        ("none", "simple", ["0", "1"]), ("none", "upgraded", ["0", "1"])]
    assert job["variants"][1]["summary"]["test"]["roc_auc"]["n"] == 2


def test_the_fast_path_reaches_the_plain_paths_metrics_within_seed_noise(small_dataset, tmp_path):
    """bf16 autocast with a channels_last model (the GPU default) against fp32 eager, same data and seeds."""
    import numpy as np
    import pandas as pd

    out = tmp_path / "out"
    base = dict(data=str(small_dataset), out=str(out), ratio=2, seeds=3, epochs=2, batch_size=16, train_malignant=12,
                val_malignant=6, val_benign=20, test_malignant=6, test_benign=20, device="cpu")
    jobs = {p: run_job(TrainConfig(run_id=p, precision=p, **base)) for p in ("fp32", "bf16")}
    assert jobs["bf16"]["environment"]["precision"] == "bf16" and jobs["fp32"]["environment"]["precision"] == "fp32"
    for metric in ("loss", "roc_auc"):
        values = {p: [s["val"][metric] for s in j["variants"][0]["seeds"].values()] for p, j in jobs.items()}
        noise = max(np.std(values["fp32"], ddof=1), np.std(values["bf16"], ddof=1), 0.02)
        assert abs(np.mean(values["bf16"]) - np.mean(values["fp32"])) <= 3 * noise, (metric, values)
    for seed in range(3):  # the same function, computed in another precision: its logits move together
        logits = [pd.read_csv(out / p / "ratio-2/none/simple" / f"seed-{seed}" / "predictions.csv")["logit"]
                  for p in ("fp32", "bf16")]
        assert np.corrcoef(*logits)[0, 1] > 0.9

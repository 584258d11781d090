"""The GPU part of the bench, one prepared script for a CUDA machine.

    python -m bench.gpu                      # the loop: training and evaluation images/s at batch 32
    python -m bench.gpu --data data/isic --val-benign 500 --test-benign 500   # and the whole ISIC study

The loop: the job's own (fused Adam; fp32, and bf16 autocast with channels_last as
`--precision auto` picks on a GPU) and the naive baseline, on synthetic images it makes itself
(images/s does not depend on the pictures). The study: 4 ratios x 5 seeds x 5 epochs in one
process, from a warm cache, the jobs one after another and concurrently. Writes
bench/results/gpu.json and regenerates the generated part of docs/benchmarks.md.
"""
import argparse
import json
import logging
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench import docs
from bench.isolated import run_isolated
from bench.measure import loop_naive, loop_ratio_cnn, study_ratio_cnn
from ratio_cnn.synth import make_synthetic_dataset

log = logging.getLogger("bench")

CORES = os.cpu_count() or 1
LOOP_IMAGES = 1024
LOOP_EPOCHS = 10  # about a second of training per timed region at the target's 15,000 images/s
RATIOS = [1, 2, 3, 5]
STUDY = {"seeds": 5, "epochs": 5, "device": "cuda"}  # the study's own; precision auto: bf16


def measure_loops(data: Path) -> dict:
    ours, naive = {}, {}
    for precision in ("fp32", "bf16"):
        log.info("loop: ratio-cnn, %s", precision)
        ours[precision] = run_isolated(loop_ratio_cnn, CORES, data=str(data), count=LOOP_IMAGES, epochs=LOOP_EPOCHS,
                                       device="cuda", precision=precision)["result"]
    for workers in (0, min(8, CORES)):
        log.info("loop: naive, %d loader workers", workers)
        naive[workers] = run_isolated(loop_naive, CORES, data=str(data), count=LOOP_IMAGES, epochs=LOOP_EPOCHS,
                                      device="cuda", num_workers=workers)["result"]
    return {"images": LOOP_IMAGES, "epochs": LOOP_EPOCHS, "ratio-cnn": ours, "naive": naive}


def measure_study(data: str, split: dict, work: Path) -> dict:
    options, cache = {**STUDY, **split}, str(work / "cache")
    log.info("study: filling the cache (1:%d, 1 seed, 1 epoch)", max(RATIOS))
    run_isolated(study_ratio_cnn, CORES, data=data, out=str(work / "warm-up"), cache=cache, ratios=[max(RATIOS)],
                 options={**options, "seeds": 1, "epochs": 1}, concurrent=False)
    runs = {}
    for name, concurrent in (("sequential", False), ("concurrent", True)):
        log.info("study: %s", name)
        runs[name] = run_isolated(study_ratio_cnn, CORES, data=data, out=str(work / name), cache=cache,
                                  ratios=RATIOS, options=options, concurrent=concurrent)
    return {"data": data, "ratios": RATIOS, "options": options, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a dataset (folder or s3://…) for the whole study; without it, the loop only")
    parser.add_argument("--val-benign", type=int, default=1000, help="benign images in val (ISIC: 500)")
    parser.add_argument("--test-benign", type=int, default=1000, help="benign images in test (ISIC: 500)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu: no CUDA GPU is visible (torch.cuda.is_available() is False): "
                         "run it on a machine with an NVIDIA GPU")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    results = {"conditions": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "command": " ".join(["python -m bench.gpu", *sys.argv[1:]]),
                              "gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                              "torch": torch.__version__, "cores": CORES}}
    with tempfile.TemporaryDirectory(prefix="ratio-cnn-bench-gpu-") as tmp:
        work = Path(tmp)
        log.info("making %d synthetic images for the loop", LOOP_IMAGES)
        make_synthetic_dataset(str(work / "data"), malignant=LOOP_IMAGES // 8, benign=LOOP_IMAGES - LOOP_IMAGES // 8)
        results["loop"] = measure_loops(work / "data")
        split = {"val_benign": args.val_benign, "test_benign": args.test_benign}
        results["study"] = measure_study(args.data, split, work) if args.data else None
    docs.GPU_RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    if docs.LATEST.exists():
        docs.write(json.loads(docs.LATEST.read_text()))
    log.info("wrote %s", docs.GPU_RESULTS)


if __name__ == "__main__":
    main()

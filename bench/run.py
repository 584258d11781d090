"""`make bench`: ratio-cnn's pipeline against the naive baseline, every part in one run.

    python -m bench.run            # the full run: about 25 minutes on 2 idle CPU cores
    python -m bench.run --quick    # tiny sizes, to check the bench itself: about 3 minutes
    python -m bench.run --checks-only DATA   # only what checking the cache costs, on DATA (prints JSON)

Measures the training loop's images/s, S3 pulls cold and warm, a whole study, and how time
and memory grow with the dataset; writes bench/results/latest.json and the generated part of
docs/benchmarks.md. Every configuration runs in a process of its own (bench/isolated.py);
the synthetic data lives in a temporary folder. CPU only: `python -m bench.gpu` is the GPU part.
"""
import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import torch

from bench import docs, naive, targets
from bench.datasets import moto_server, scaled_copy, upload
from bench.isolated import run_isolated
from bench.measure import cache_checks, job, loop_naive, loop_ratio_cnn, model_and_optimizer_bytes, study_ratio_cnn
from ratio_cnn.config import TrainConfig
from ratio_cnn.storage import open_storage
from ratio_cnn.synth import BENIGN, MALIGNANT, make_synthetic_dataset

log = logging.getLogger("bench")

CORES = os.cpu_count() or 1
SPLIT = ("train_malignant", "val_malignant", "val_benign", "test_malignant", "test_benign")
STUDY_SPLIT = {name: getattr(TrainConfig, name) for name in SPLIT}  # 293 training malignant; 50 + 1000 val and test
LARGE_EVAL_BATCH = 256  # what a GPU evaluates at: on a CPU, the memory it costs is shown beside the default


@dataclass(frozen=True)
class Sizes:
    malignant: int  # the 1x dataset
    benign: int
    job: dict  # TrainConfig options of the one-ratio jobs: S3, memory, and scale (split sizes times k)
    loop_images: int  # images per timed pass of each training loop
    rounds: int  # loop measurements per pipeline, interleaved; the best is kept
    study_ratios: tuple
    study: dict  # TrainConfig options of the whole study, the same for both sides
    scales: tuple


# The study's dataset and split sizes; a study small enough for a CPU (2 seeds, 1 epoch,
# val and test of 50 + 200), run four times (naive, ratio-cnn three ways).
FULL = Sizes(malignant=MALIGNANT, benign=BENIGN, job={**STUDY_SPLIT, "epochs": 1, "seeds": 1, "device": "cpu"},
             loop_images=960, rounds=2, study_ratios=(1, 2, 3, 5),
             study={**STUDY_SPLIT, "val_benign": 200, "test_benign": 200, "epochs": 1, "seeds": 2, "device": "cpu"},
             scales=(1, 4, 16))
QUICK = Sizes(malignant=24, benign=120,
              job={"train_malignant": 6, "val_malignant": 4, "val_benign": 24, "test_malignant": 4,
                   "test_benign": 24, "epochs": 1, "seeds": 1, "device": "cpu"},
              loop_images=64, rounds=1, study_ratios=(1, 2, 3, 5),
              study={"train_malignant": 6, "val_malignant": 4, "val_benign": 16, "test_malignant": 4,
                     "test_benign": 16, "epochs": 1, "seeds": 1, "device": "cpu"},
              scales=(1, 4, 16))


def measure_loops(data: Path, sizes: Sizes) -> dict:
    """Training and evaluation images/s, same images and model, each pipeline in its own process;
    ratio-cnn as the job runs here (`--precision auto`: fp32 on a CPU) and with bf16 autocast (opt-in)."""
    pipelines = {
        "naive": lambda: run_isolated(loop_naive, CORES, data=str(data), count=sizes.loop_images, epochs=1),
        "naive, 2 loader workers": lambda: run_isolated(loop_naive, CORES, data=str(data), count=sizes.loop_images,
                                                        epochs=1, num_workers=2),
        "ratio-cnn": lambda: run_isolated(loop_ratio_cnn, CORES, data=str(data), count=sizes.loop_images, epochs=1),
        "ratio-cnn, bf16": lambda: run_isolated(loop_ratio_cnn, CORES, data=str(data), count=sizes.loop_images,
                                                epochs=1, precision="bf16"),
    }
    runs = {name: [] for name in pipelines}
    for i in range(1, sizes.rounds + 1):  # interleaved: a noisy minute on the shared machine hits every side
        for name, measure in pipelines.items():
            log.info("loop, round %d/%d: %s", i, sizes.rounds, name)
            runs[name].append(measure()["result"])
    best = {name: {k: max(r[k] for r in rs) for k in rs[0] if k.endswith("_per_second")} for name, rs in runs.items()}
    return {"images": sizes.loop_images, "batch_size": TrainConfig.batch_size, "torch_threads": CORES,
            "best": best, "runs": runs}


def measure_s3(data: Path, work: Path, sizes: Sizes) -> dict:
    """The dataset on a local moto server; a job's data phase cold (empty cache) and warm (same cache)."""
    uri = "s3://bench/datasets/synthetic"
    with moto_server():
        log.info("S3: uploading the dataset to moto")
        objects, upload_seconds = upload(data, uri)
        storage = open_storage(uri)
        keys = list(storage.list_versions())
        started = time.perf_counter()
        storage.get_many(keys, workers=TrainConfig.workers)
        get_many_seconds = time.perf_counter() - started
        runs = {}
        for name in ("cold", "warm"):
            log.info("S3: a 1:1 job, %s cache", name)
            runs[name] = run_isolated(job, CORES, data=uri, out=str(work / f"s3-{name}"), cache=str(work / "s3-cache"),
                                      ratio=1, options=sizes.job)
    return {"objects": objects, "upload_objects_per_second": objects / upload_seconds,
            "get_many_objects_per_second": len(keys) / get_many_seconds, "workers": TrainConfig.workers, **runs}


def measure_study(data: Path, work: Path, sizes: Sizes) -> dict:
    """The whole study's wall time: the naive one, and ratio-cnn's jobs sequential and concurrent."""
    common = {"data": str(data), "ratios": list(sizes.study_ratios), "options": sizes.study}
    variants = {  # name: (torch threads, jobs concurrent in threads)
        f"ratio-cnn, sequential, {CORES} threads": (CORES, False),
        "ratio-cnn, concurrent, 1 thread per job": (1, True),
        f"ratio-cnn, concurrent, {CORES} threads per job": (CORES, True),
    }
    out = work / "study"
    log.info("study: naive")
    runs = {"naive": run_isolated(naive.run_study, CORES, out=str(out), **common)}
    shutil.rmtree(out)  # a model.pt of 134 MB per seed
    for name, (threads, concurrent) in variants.items():
        log.info("study: %s", name)
        runs[name] = run_isolated(study_ratio_cnn, threads, out=str(out), cache=str(work / "study-cache"),
                                  concurrent=concurrent, **common)
        shutil.rmtree(out)
        shutil.rmtree(work / "study-cache")  # every variant starts cold and decodes once
    return {"ratios": list(sizes.study_ratios), "options": sizes.study, "runs": runs}


def measure_checks(data: Path, work: Path, sizes: Sizes) -> dict:
    """What checking the cache costs on a warm re-run of a 1:1 job (bench.measure.cache_checks)."""
    log.info("checks: a 1:1 job's warm data phase, and its cache reads with and without their checks")
    return run_isolated(cache_checks, CORES, data=str(data), cache=str(work / "checks-cache"), ratio=1,
                        options=sizes.job)


def measure_scale(data: Path, work: Path, sizes: Sizes) -> dict:
    """A 1:1 job, 1 epoch, on the dataset k times over with split sizes k times over, cold cache;
    beside the 1x job, the same at evaluation batch 32 (how much evaluation's batch holds) and
    the naive job."""
    rows = []
    for k in sizes.scales:
        folder, out, cache = work / f"data-{k}x", work / f"scale-{k}x", work / f"cache-{k}x"
        images = scaled_copy(data, folder, k)
        log.info("scale %dx: a 1:1 job on %d images", k, images)
        options = {**sizes.job, **{name: sizes.job[name] * k for name in SPLIT}}
        run = run_isolated(job, CORES, data=str(folder), out=str(out), cache=str(cache), ratio=1, options=options)
        rows.append({"scale": k, "dataset_images": images, "options": options, **run})
        for path in (folder, out, cache):
            shutil.rmtree(path)
    log.info("scale 1x: the job at evaluation batch %d", LARGE_EVAL_BATCH)
    large_eval = run_isolated(job, CORES, data=str(data), out=str(work / "large-eval"),
                              cache=str(work / "large-eval-cache"), ratio=1,
                              options={**sizes.job, "eval_batch_size": LARGE_EVAL_BATCH})
    log.info("scale 1x: the naive job")
    naive_job = run_isolated(naive.run_study, CORES, data=str(data), out=str(work / "naive-job"), ratios=[1],
                             options=sizes.job)
    return {"rows": rows, "large_eval_1x": large_eval, "naive_1x": naive_job, "image_bytes": 3 * 128 * 128,
            "model_and_optimizer_bytes": model_and_optimizer_bytes()}


def conditions(quick: bool, sizes: Sizes) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "quick": quick,
        "machine": {"cpu": _cpu_model(cpuinfo), "cores": CORES, "ram_bytes": _ram_bytes(), "host": platform.node(),
                    "native_bf16": bool({"avx512_bf16", "amx_bf16"} & set(cpuinfo.split())),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "versions": {"python": platform.python_version(), **{p: version(p) for p in (
            "torch", "torchvision", "numpy", "pillow", "boto3", "moto")}},
        "load_average_at_start": os.getloadavg(),
        "sizes": asdict(sizes),
    }


def _cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the bench itself")
    parser.add_argument("--out", type=Path, default=docs.LATEST,
                        help="the JSON file to write (default: bench/results/latest.json)")
    parser.add_argument("--make-study-seconds", type=float,
                        help="the wall time of `make study`, measured separately, for the targets table")
    parser.add_argument("--checks-only", metavar="DATA", type=Path,
                        help="measure only what checking the cache costs, on the dataset DATA; print it as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    sizes = QUICK if args.quick else FULL
    if args.checks_only:
        with tempfile.TemporaryDirectory(prefix="ratio-cnn-bench-") as tmp:
            print(json.dumps(measure_checks(args.checks_only, Path(tmp), sizes), indent=1))
        return
    started = time.perf_counter()
    results = {"conditions": conditions(args.quick, sizes), "make_study_seconds": args.make_study_seconds}
    with tempfile.TemporaryDirectory(prefix="ratio-cnn-bench-") as tmp:
        work, data = Path(tmp), Path(tmp) / "data"
        log.info("making the synthetic dataset (%d images)", sizes.malignant + sizes.benign)
        make_synthetic_dataset(str(data), sizes.malignant, sizes.benign, seed=0)
        results["loop"] = measure_loops(data, sizes)
        results["s3"] = measure_s3(data, work, sizes)
        results["checks"] = measure_checks(data, work, sizes)
        results["study"] = measure_study(data, work, sizes)
        results["scale"] = measure_scale(data, work, sizes)
    results["conditions"].update(load_average_at_end=os.getloadavg(), bench_seconds=time.perf_counter() - started)
    results["memory_limits"] = targets.memory_limits(results["scale"], results["conditions"]["machine"]["ram_bytes"])
    results["targets"] = targets.evaluate(results, docs.read_gpu_results())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    written = docs.write(results)
    log.info("wrote %s and %s in %.0f s", args.out, written, time.perf_counter() - started)


if __name__ == "__main__":
    main()

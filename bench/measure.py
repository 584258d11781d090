"""What the bench measures: one function per measured configuration.

Each runs in a process of its own (bench/isolated.py) and returns plain numbers. The
ratio-cnn side is the project's own code: `run_job`, or the parts of its loop as the job
calls them (`load_images`, `build_replicate`, `train_one_epoch`, `predict`); the naive side is
bench/naive.py. Timed regions exclude a warm-up and drain the GPU's queue at both ends.
"""
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from bench import naive
from ratio_cnn.cache import ROW_SHAPE, DecodedImages, content_hash
from ratio_cnn.config import TrainConfig
from ratio_cnn.data import LABELS, MANIFEST, digest, load_images, read_manifest
from ratio_cnn.evaluate import predict
from ratio_cnn.job import load_data, read_dataset, run_job
from ratio_cnn.model import SimpleCNN
from ratio_cnn.storage import LocalStorage, open_storage
from ratio_cnn.strategies import make_plan
from ratio_cnn.train import build_replicate, pick_eval_batch, pick_precision, train_one_epoch

WARM_UP = 64  # images (two batches) through each loop before timing: allocator, kernels, page cache
BATCH, LR = TrainConfig.batch_size, TrainConfig.lr


def model_and_optimizer_bytes() -> int:
    """SimpleCNN's fp32 weights and gradients, and Adam's two moments: four copies of the weights."""
    with torch.device("meta"):
        return 4 * 4 * sum(p.numel() for p in SimpleCNN().parameters())


def benchmark_rows(data: str, count: int) -> pd.DataFrame:
    """The same `count` images, in the same order, for both pipelines."""
    manifest = read_manifest((Path(data) / MANIFEST).read_bytes(), data)
    return manifest.sample(count, random_state=0)


def _timed(work: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Seconds for `repeat` calls of work()."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeat):
        work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def loop_ratio_cnn(data: str, count: int, epochs: int, device: str = "cpu", precision: str = "auto") -> dict:
    """Images/s of the job's loop: decoded once, then `epochs` of training and of evaluation."""
    device = torch.device(device)
    precision = pick_precision(precision, device)  # auto: what the job would pick here
    rows = benchmark_rows(data, count)
    storage = open_storage(data)
    started = time.perf_counter()
    loaded = load_images(storage, rows, list(rows["image"]), storage.list_versions(), None, "", TrainConfig.workers,
                         time.monotonic() + TrainConfig.data_deadline, max_skipped=0)
    decode_seconds = time.perf_counter() - started
    images = loaded.images.to(device)
    labels = torch.tensor(rows["label"].map(LABELS).to_numpy(), dtype=torch.float32, device=device)
    replicate = build_replicate("simple", "none", 0, images, labels, LR, precision, TrainConfig.synthetic_malignant)
    model, optimizer, plan = replicate.model, replicate.optimizer, replicate.plan
    order, draws = replicate.order_generator, replicate.device_generator
    eval_batch = pick_eval_batch(TrainConfig.eval_batch_size, device)
    warm_up = make_plan("none", images[:WARM_UP], labels[:WARM_UP], draws)

    train_one_epoch(model, optimizer, warm_up, BATCH, order, draws, precision)
    train = _timed(lambda: train_one_epoch(model, optimizer, plan, BATCH, order, draws, precision), device, epochs)
    predict(model, images[:WARM_UP], eval_batch, precision)
    evaluation = _timed(lambda: predict(model, images, eval_batch, precision), device, epochs)
    return {"train_images_per_second": epochs * count / train, "eval_images_per_second": epochs * count / evaluation,
            "decode_images_per_second": count / decode_seconds, "eval_batch_size": eval_batch, "precision": precision}


def loop_naive(data: str, count: int, epochs: int, device: str = "cpu", num_workers: int = 0) -> dict:
    """Images/s of the baseline: its loader alone, then `epochs` of training and of evaluation."""
    device = torch.device(device)
    rows = benchmark_rows(data, count)
    train_loader, eval_loader = (naive.make_loader(Path(data), rows, shuffle, num_workers) for shuffle in (True, False))
    warm_up = naive.make_loader(Path(data), rows.iloc[:WARM_UP], True, num_workers)
    model, optimizer = naive.new_model(0, device)

    list(warm_up)
    loader_only = _timed(lambda: list(train_loader), device, epochs)  # open, decode, ToTensor, Normalize, collate
    naive.train_epoch(model, warm_up, optimizer, device)
    train = _timed(lambda: naive.train_epoch(model, train_loader, optimizer, device), device, epochs)
    naive.predict(model, warm_up, device)
    evaluation = _timed(lambda: naive.predict(model, eval_loader, device), device, epochs)
    return {"train_images_per_second": epochs * count / train, "eval_images_per_second": epochs * count / evaluation,
            "loader_images_per_second": epochs * count / loader_only, "eval_batch_size": BATCH,
            "num_workers": num_workers}


def job(data: str, out: str, cache: str, ratio: float, options: dict) -> dict:
    """One whole ratio-cnn job (`run_job`): its timings and how many images it held decoded."""
    metrics = run_job(TrainConfig(ratio=ratio, data=data, out=out, cache=cache, run_id="bench", **options))
    return {"images": sum(c["malignant"] + c["benign"] for c in metrics["data"]["counts"].values()),
            "eval_batch_size": metrics["environment"]["eval_batch_size"], "timings": metrics["timings"],
            "train_images_per_second": [s["timings"]["train_images_per_second"]
                                        for v in metrics["variants"] for s in v["seeds"].values()]}


def study_ratio_cnn(data: str, out: str, cache: str, ratios: list[float], options: dict, concurrent: bool) -> dict:
    """Every ratio's job in this process, one after another or all at once in threads (as the
    in-process Prefect study runs them)."""
    configs = [TrainConfig(ratio=r, data=data, out=out, cache=cache, run_id="bench", **options) for r in ratios]
    if concurrent:
        with ThreadPoolExecutor(len(configs)) as pool:
            jobs = list(pool.map(run_job, configs))
    else:
        jobs = [run_job(cfg) for cfg in configs]
    return {"job_seconds": [j["timings"]["total_seconds"] for j in jobs],
            "decoded": sum(j["timings"]["decoded"] for j in jobs)}


def cache_checks(data: str, cache: str, ratio: float, options: dict, repeats: int = 5) -> dict:
    """What checking the cache costs on a warm re-run: the job's data phase (`load_data`, after a first
    call filled the cache) and, over the same decoded rows, `DecodedImages.read` (each row checked,
    cache.row_checks) against the same copy unchecked; the best of `repeats` of each. A warm run
    reads no cached object, so no SHA-256 of one is computed (the manifest's aside). Beside them, the
    alternatives not taken: a CRC-32 of every row instead, and for a local dataset, keying its files
    by content (reading and hashing every used image)."""
    cfg = TrainConfig(ratio=ratio, data=data, out="bench-unused", cache=cache, run_id="bench", **options)
    source = open_storage(data)
    warm = []
    for _ in range(repeats + 1):  # the first fills the cache, or finds it filled
        started = time.perf_counter()
        dataset = load_data(cfg, source, "bench")
        warm.append(time.perf_counter() - started)
    _, raw_manifest, manifest = read_dataset(source, cfg.cache_dir)
    row_of = {name: i for i, name in enumerate(manifest["image"])}
    rows = [row_of[name] for name in dataset.loaded.names]
    at = list(range(len(rows)))
    into = np.empty((len(rows), *ROW_SHAPE), dtype=np.uint8)
    decoded = DecodedImages(cfg.cache_dir, source.uri, digest(raw_manifest), len(manifest))
    with decoded.locked():
        checked = min(_timed(lambda: decoded.read(rows, into, at), torch.device("cpu"), 1) for _ in range(repeats))
        unchecked = min(_timed(lambda: _read_unchecked(decoded, rows, into, at), torch.device("cpu"), 1)
                        for _ in range(repeats))
    crc32 = min(_timed(lambda: [zlib.crc32(row) for row in into], torch.device("cpu"), 1) for _ in range(repeats))
    hash_local = None
    if isinstance(source, LocalStorage):
        hash_local = min(_timed(lambda: [content_hash(raw) for raw in source.get_many(
            dataset.loaded.names, workers=cfg.workers).values()], torch.device("cpu"), 1) for _ in range(repeats))
    best = min(warm[1:])
    return {"images": len(rows), "warm_load_seconds": best, "warm_load_runs": warm[1:],
            "read_checked_seconds": checked, "read_unchecked_seconds": unchecked,
            "checks_seconds": checked - unchecked, "checks_share": (checked - unchecked) / best,
            "crc32_seconds": crc32, "hash_local_seconds": hash_local}


def _read_unchecked(decoded: DecodedImages, rows: list[int], into: np.ndarray, at: list[int], chunk: int = 64) -> None:
    """DecodedImages.read without its checks: the same chunked copy, the baseline the checks are measured against."""
    images = np.memmap(decoded.images_path, dtype=np.uint8, mode="r", shape=(decoded.rows, *ROW_SHAPE))
    for start in range(0, len(rows), chunk):
        into[at[start : start + chunk]] = images[rows[start : start + chunk]]
    del images

"""One training job: one ratio, from a dataset prefix to metrics and figures in storage.

Reads top to bottom: claim the job folder, load the data once, then for every (strategy,
model) and every seed: model, training, evaluation, outputs; metrics.json last. Its
presence under <out>/<run-id>/ratio-<N>/ means the job finished (job_folder.py has the
layout). A seed changes the initial weights and the batch order and nothing else: val and
test are the same for every seed and ratio, and with `--sample fixed` so is each ratio's
training sample, so seed s at 1:1 and seed s at 1:5 start from the same weights.
"""
import io
import json
import logging
import platform
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ratio_cnn import checkpoint, data, plots
from ratio_cnn.config import TrainConfig, ratio_name, variant_folder
from ratio_cnn.data import LABELS, LoadedImages
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.evaluate import evaluate
from ratio_cnn.job_folder import JobFolder
from ratio_cnn.model import attach_dropout_generator, build_model
from ratio_cnn.stats import METRICS, seed_interval, sigmoid
from ratio_cnn.storage import Storage, open_storage
from ratio_cnn.strategies import make_plan
from ratio_cnn.train import make_optimizer, pick_device, pick_eval_batch, pick_precision, train_one_epoch

log = logging.getLogger(__name__)

def run_job(cfg: TrainConfig, flow_run: str | None = None) -> dict:
    """Run the job; on failure leave error.json (the reason) where metrics.json would be."""
    out = open_storage(cfg.out, timeout=cfg.storage_timeout)
    staging = cfg.cache_dir / "staging" if cfg.cache_dir else Path(tempfile.gettempdir()) / "ratio-cnn-staging"
    folder = JobFolder(out, cfg.job_prefix, staging / _slug(out.describe(cfg.job_prefix)), flow_run)
    folder.check_writable()
    folder.claim(cfg.to_dict(), cfg.resume)
    try:
        folder.start_heartbeat()
        metrics = train_and_evaluate(cfg, folder)
        folder.finish(metrics)
        return metrics
    except BaseException as e:  # Ctrl-C and SIGTERM too: the folder says why it stopped
        folder.fail(e)
        raise


def _slug(uri: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in uri)[-150:]


def train_and_evaluate(cfg: TrainConfig, folder: JobFolder) -> dict:
    started = time.perf_counter()
    title = f"1:{ratio_name(cfg.ratio)} ratio"
    source = open_storage(cfg.data, timeout=cfg.storage_timeout)
    deadline = time.monotonic() + cfg.data_deadline

    # -------------------------------------------------------------------------
    # data: manifest, split, samples, then every image fetched and decoded once
    log.info("%s: reading the dataset at %s", title, source.uri)
    present = source.list_versions()
    if data.MANIFEST not in present:
        raise RatioCnnError(f"no dataset at {source.uri} ({data.MANIFEST} is missing): make one with "
                            f"`ratio-cnn data synth --out {source.uri}` or `ratio-cnn data ingest SRC --out {source.uri}`")
    raw_manifest = data.get_manifest(source, present[data.MANIFEST], cfg.cache_dir)
    manifest = data.read_manifest(raw_manifest, source.describe(data.MANIFEST))
    samples = {seed: data.split_and_sample(manifest, cfg, source.uri, seed if cfg.sample == "per-seed" else None)
               for seed in cfg.seeds}
    sets = samples[cfg.seeds[0]]
    data.check_images_exist(source, present, [s["train"] for s in samples.values()] + [sets["val"], sets["test"]])
    log.info("%s: %s", title, ", ".join(f"{s} {c['malignant']} malignant + {c['benign']} benign"
                                         for s, c in data.class_counts(sets).items()))
    # Val, test, then training images: each split of the first sample is one run of rows, a view of
    # the decoded set rather than a copy (later seeds' other samples, with --sample per-seed, are copies).
    needed = list(dict.fromkeys(n for split in ("val", "test", "train") for s in samples.values()
                                for n in s[split]["image"]))
    data.check_memory(len(needed), torch.device("cpu"))
    loaded = data.load_images(source, manifest, needed, present, cfg.cache_dir, data.digest(raw_manifest),
                              cfg.workers, deadline, cfg.max_skipped)
    label_of = dict(zip(manifest["image"], manifest["label"].map(LABELS)))
    labels = torch.tensor([label_of[n] for n in loaded.names], dtype=torch.float32)
    rows = {seed: {split: loaded.rows(df["image"]) for split, df in s.items()} for seed, s in samples.items()}
    counts = {split: _counts(labels[r]) for split, r in rows[cfg.seeds[0]].items()}
    load_seconds = time.perf_counter() - started
    log.info("%s: %d images ready (%d downloaded, %d decoded, the rest from the cache) in %.1f s", title,
             len(loaded.names), loaded.downloaded, loaded.decoded, load_seconds)

    # -------------------------------------------------------------------------
    # the whole dataset lives on the device; batches are normalised there
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    if device.type == "cuda":
        data.check_memory(len(loaded.names), device)
    pool, labels = loaded.images.to(device), labels.to(device)
    loaded.images = None  # on a GPU, the CPU copy goes
    evaluation = {split: _take(pool, labels, rows[cfg.seeds[0]][split]) for split in ("val", "test")}
    shared_train = _take(pool, labels, rows[cfg.seeds[0]]["train"]) if cfg.sample == "fixed" else None
    log.info("%s: training on %s (%s) for %d epochs, %d seed(s), %s", title, device, precision, cfg.epochs,
             len(cfg.seeds), ", ".join(f"{s}+{m}" for s, m in cfg.variants))

    variants = []
    for strategy, model_name in cfg.variants:
        variant = variant_folder(strategy, model_name)
        per_seed = {}
        for seed in cfg.seeds:
            train = shared_train or _take(pool, labels, rows[seed]["train"])
            per_seed[seed] = run_seed(cfg, folder, variant, strategy, model_name, seed, *train, evaluation,
                                      loaded, rows[seed], device, precision, f"{title} {variant} seed {seed}")
        write_variant_figures(folder, variant, per_seed, f"{title} — {strategy}, {model_name}")
        variants.append({"strategy": strategy, "model": model_name, "folder": variant,
                         "seeds": {str(s): m for s, m in per_seed.items()}, "summary": summarise(per_seed)})

    # -------------------------------------------------------------------------
    # the job's metrics.json: every seed of every variant, and their summary
    return {
        "ratio": cfg.ratio,
        "run_id": cfg.run_id,
        "config": cfg.to_dict(),
        "data": {"uri": source.uri, "manifest_digest": data.digest(raw_manifest), "counts": counts,
                 "sample": cfg.sample, "skipped_images": loaded.skipped},
        "variants": variants,
        "timings": {"load_seconds": load_seconds, "downloaded": loaded.downloaded, "decoded": loaded.decoded,
                    "total_seconds": time.perf_counter() - started},
        "environment": environment(device, precision) | {"eval_batch_size": pick_eval_batch(cfg.eval_batch_size, device)},
    }


def run_seed(cfg: TrainConfig, folder: JobFolder, variant: str, strategy: str, model_name: str, seed: int,
             train_images: torch.Tensor, train_labels: torch.Tensor, evaluation: dict, loaded: LoadedImages,
             rows: dict, device: torch.device, precision: str, title: str) -> dict:
    """One replicate: train (from its checkpoint when resuming), evaluate, write its outputs."""
    if cfg.resume:
        done = folder.seed_done(variant, seed) or folder.upload_staged(variant, seed)
        if done:
            log.info("%s: done by an earlier attempt", title)
            return done
    started = time.perf_counter()
    # Every random draw of the seed comes from these generators, never from the global RNG,
    # so seeds running side by side in one process cannot change each other's results.
    order_generator = torch.Generator().manual_seed(seed)
    device_generator = torch.Generator(device).manual_seed(seed)
    model = build_model(model_name, torch.Generator().manual_seed(seed)).to(device)
    if precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
    attach_dropout_generator(model, device_generator)
    plan = make_plan(strategy, train_images, train_labels, device_generator, cfg.synthetic_malignant)
    optimizer = make_optimizer(model, cfg.lr)
    generators = {"order": order_generator, "device": device_generator}
    eval_batch = pick_eval_batch(cfg.eval_batch_size, device)
    first_epoch, history = 1, []
    if cfg.resume and (saved := folder.load_checkpoint(variant, seed)) is not None:
        last, history = checkpoint.unpack(saved, model, optimizer, generators)
        first_epoch = last + 1
        log.info("%s: resuming after epoch %d", title, last)

    # -------------------------------------------------------------------------
    # training, with the validation metrics after every epoch
    last_checkpoint = time.monotonic()
    for epoch in range(first_epoch, cfg.epochs + 1):
        epoch_started = time.perf_counter()
        train = train_one_epoch(model, optimizer, plan, cfg.batch_size, order_generator, device_generator,
                                precision, description=f"{title} epoch {epoch}/{cfg.epochs}")
        val, val_logits = evaluate(model, *evaluation["val"], eval_batch, cfg.threshold, precision)
        history.append({"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                        "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_roc_auc": val["roc_auc"],
                        "seconds": time.perf_counter() - epoch_started})
        log.info("%s epoch %d/%d: train loss %.4f acc %.3f | val loss %.4f acc %.3f", title, epoch, cfg.epochs,
                 train["loss"], train["accuracy"], val["loss"], val["accuracy"])
        folder.check_owner()
        if epoch < cfg.epochs and time.monotonic() - last_checkpoint >= cfg.checkpoint_every:
            folder.save_checkpoint(variant, seed, checkpoint.pack(model, optimizer, epoch, history, generators))
            last_checkpoint = time.monotonic()
    train_seconds = time.perf_counter() - started

    # -------------------------------------------------------------------------
    # evaluation of the final model: val from the last epoch, test now
    test, test_logits = evaluate(model, *evaluation["test"], eval_batch, cfg.threshold, precision)
    log.info("%s test: loss %.4f acc %.3f precision %.3f recall %.3f F1 %.3f ROC-AUC %s", title, test["loss"],
             test["accuracy"], test["precision"], test["recall"], test["f1"],
             "n/a" if test["roc_auc"] is None else f"{test['roc_auc']:.3f}")

    # -------------------------------------------------------------------------
    # outputs: staged here, uploaded with the seed's metrics.json last
    metrics = {"seed": seed, "strategy": strategy, "model": model_name, "val": val, "test": test,
               "train": {**_counts(plan.labels), "odds": plan.train_odds},
               "timings": {"train_seconds": train_seconds, "epochs_trained": cfg.epochs - first_epoch + 1,
                           "train_images_per_second": (cfg.epochs - first_epoch + 1) * len(plan.labels)
                           / max(train_seconds, 1e-9)}}
    predictions = pd.concat([
        pd.DataFrame({"split": split, "image": [loaded.names[i] for i in rows[split].tolist()],
                      "label": np.where(evaluation[split][1].cpu().numpy() == 1, "malignant", "benign"),
                      "logit": logits.astype(np.float64), "probability": sigmoid(logits)})
        for split, logits in (("val", val_logits), ("test", test_logits))])
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)  # loads with weights_only=True
    files = {"history.csv": pd.DataFrame(history).to_csv(index=False).encode(),
             "predictions.csv": predictions.to_csv(index=False).encode(), "model.pt": weights.getvalue()}
    folder.write_seed(variant, seed, files, metrics)
    return metrics


def write_variant_figures(folder: JobFolder, variant: str, per_seed: dict, title: str) -> None:
    """The confusion matrices and curves of the first seed, and the curves of every seed."""
    histories = {s: pd.read_csv(io.BytesIO(folder.out.get(folder.key(variant, f"seed-{s}", "history.csv"))))
                 for s in per_seed}
    first = next(iter(per_seed))
    with tempfile.TemporaryDirectory(prefix="ratio-cnn-") as tmp:
        figures = {
            "confusion_matrix.png": lambda p: plots.confusion_matrices(
                {s: per_seed[first][s] for s in ("val", "test")}, f"{title}, seed {first}", p),
            "curves.png": lambda p: plots.training_curves(histories[first], f"{title}, seed {first}", p),
            "curves_by_seed.png": lambda p: plots.training_curves_by_seed(histories, title, p),
        }
        for name, draw in figures.items():
            path = Path(tmp) / name
            draw(path)
            folder.put(variant, name, data=path.read_bytes())


def summarise(per_seed: dict[int, dict]) -> dict:
    """Mean over seeds with a 95% t interval (stats.seed_interval, as the report's), for every metric of val and test."""
    intervals = {split: {metric: seed_interval([m[split][metric] for m in per_seed.values()],
                                               None if metric == "loss" else 1.0) for metric in METRICS}
                 for split in ("val", "test")}
    return {split: {metric: i and i.to_dict() for metric, i in by_metric.items()} for split, by_metric in intervals.items()}


def _take(images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """These rows of the set: a view when they are one run (no copy), else a copy."""
    if len(rows) and bool((rows == torch.arange(rows[0], rows[0] + len(rows))).all()):
        return images[rows[0] : rows[0] + len(rows)], labels[rows[0] : rows[0] + len(rows)]
    rows = rows.to(images.device)
    return images[rows], labels[rows]


def _counts(labels: torch.Tensor) -> dict:
    malignant = int(labels.sum().item())
    return {"malignant": malignant, "benign": len(labels) - malignant}


def environment(device: torch.device, precision: str) -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit_learn": version("scikit-learn"),
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "precision": precision,
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
    }

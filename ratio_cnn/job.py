"""One training job: one ratio, from a dataset prefix to metrics and figures in storage.

Reads top to bottom: claim the job folder, load the data once, then for every (strategy,
model) and every seed: model, training, evaluation, outputs; metrics.json last. Its
presence under <out>/<run-id>/ratio-<N>/ means the job finished (job_folder.py has the
layout). A seed changes the initial weights and the batch order and nothing else: val and
test are the same for every seed and ratio, and with `--sample fixed` so is each ratio's
training sample, so seed s at 1:1 and seed s at 1:5 start from the same weights.
"""
import io
import logging
import platform
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ratio_cnn import checkpoint, data, dedupe, plots, provenance
from ratio_cnn.config import TrainConfig, ratio_name, variant_folder
from ratio_cnn.data import LABELS, LoadedImages
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.evaluate import evaluate
from ratio_cnn.job_folder import WEIGHTS, JobFolder
from ratio_cnn.stats import METRICS, seed_interval, sigmoid
from ratio_cnn.storage import Storage, Traffic, open_storage
from ratio_cnn.train import (Replicate, build_replicate, pick_device, pick_eval_batch, pick_precision,
                             train_one_epoch)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """Rows of the job's decoded images, on the device."""

    images: torch.Tensor  # (n, 3, 128, 128) uint8
    labels: torch.Tensor  # (n,) float32, 1 = malignant
    names: list[str]  # the image of each row
    metadata: pd.DataFrame  # the manifest's metadata columns of each row, written beside its predictions


@dataclass
class EvalSet:
    """An extra evaluation set (--eval-data NAME=URI, or --holdout's images): every model is evaluated on it."""

    split: Split
    described: dict  # metrics.json's data.eval_sets entry: uri, counts, images also in training
    decoded: int = 0  # images decoded to load it (not from the cache)
    traffic: Traffic | None = None  # what reading it took from its storage (a --holdout set is the job's own)


@dataclass
class JobData:
    """Every image the job needs, decoded once; each seed's splits are rows of it."""

    loaded: LoadedImages  # the images (on the device once `move_to` ran), their names, what loading took
    labels: torch.Tensor  # (N,) float32, 1 = malignant: one per image
    rows: dict[int, dict[str, torch.Tensor]]  # seed -> "train", "val", "test" -> rows of the images
    counts: dict[str, dict[str, int]]  # split -> malignant and benign images (of the first seed's sample)
    manifest_digest: str
    metadata: pd.DataFrame  # by image: the manifest's columns beyond image, label and split
    described: dict  # metrics.json's data section: columns, train_values, split, eval_sets (report.py reads it)
    extra: dict[str, EvalSet]  # by name: the extra evaluation sets

    def move_to(self, device: torch.device) -> None:
        """Images and labels onto the device; on a GPU the CPU copy goes."""
        self.loaded.images, self.labels = self.loaded.images.to(device), self.labels.to(device)
        for name, extra in self.extra.items():
            self.extra[name].split = Split(extra.split.images.to(device), extra.split.labels.to(device),
                                           extra.split.names, extra.split.metadata)

    def splits(self, seed: int) -> dict[str, Split]:
        return {split: select_rows(self.loaded.images, self.labels, self.loaded.names, rows, self.metadata)
                for split, rows in self.rows[seed].items()}


@dataclass(frozen=True)
class TrainedReplicate:
    """What training a replicate gives besides its model."""

    history: list[dict]  # one row per epoch from the first (a resumed seed's earlier rows come from its checkpoint)
    val: dict  # the last epoch's val metrics
    val_logits: np.ndarray  # (n,) float32
    epochs_trained: int  # by this attempt


def run_job(cfg: TrainConfig, flow_run: str | None = None) -> dict:
    """Run the job; on failure leave error.json (the reason) where metrics.json would be."""
    out = open_storage(cfg.out, timeout=cfg.storage_timeout)
    folder = JobFolder(out, cfg.job_prefix, cfg.cache_dir, flow_run)
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


def train_and_evaluate(cfg: TrainConfig, folder: JobFolder) -> dict:
    """Load the data once, then train and evaluate every seed of every variant; the job's metrics.json."""
    started = time.perf_counter()
    title = f"1:{ratio_name(cfg.ratio)} ratio"
    source = open_storage(cfg.data, timeout=cfg.storage_timeout)
    dataset = load_data(cfg, source, title)
    load_seconds = time.perf_counter() - started
    log.info("%s: %d images ready (%d downloaded, %d decoded, the rest from the cache) in %.1f s", title,
             len(dataset.loaded.names), dataset.loaded.downloaded, dataset.loaded.decoded, load_seconds)
    record = data_record(dataset)
    folder.bind_data(record)  # a resumed job stops here unless it reads what the earlier attempt read

    # -------------------------------------------------------------------------
    # the whole dataset lives on the device; batches are normalised there
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    if device.type == "cuda":
        data.check_memory(len(dataset.loaded.names) + sum(len(e.split.names) for e in dataset.extra.values()), device)
    dataset.move_to(device)
    log.info("%s: training on %s (%s) for %d epochs, %d seed(s), %s", title, device, precision, cfg.epochs,
             len(cfg.seeds), ", ".join(f"{s}+{m}" for s, m in cfg.variants))

    variants = []
    for strategy, model_name in cfg.variants:
        variant = variant_folder(strategy, model_name)
        seed_metrics, histories = {}, {}
        for seed in cfg.seeds:
            seed_metrics[seed], histories[seed] = run_seed(cfg, folder, strategy, model_name, seed,
                                                           dataset.splits(seed), dataset.extra, precision,
                                                           f"{title} {variant} seed {seed}")
        write_variant_figures(folder, variant, seed_metrics, histories, f"{title} — {strategy}, {model_name}")
        variants.append({"strategy": strategy, "model": model_name, "folder": variant,
                         "seeds": {str(s): m for s, m in seed_metrics.items()},
                         "summary": intervals_over_seeds(seed_metrics)})

    # -------------------------------------------------------------------------
    # the job's metrics.json: every seed of every variant, and their summary
    return {
        "ratio": cfg.ratio,
        "run_id": cfg.run_id,
        "config": cfg.to_dict(),
        "data": {"uri": source.uri, "manifest_digest": dataset.manifest_digest,
                 "data_digest": record["data_digest"], "counts": dataset.counts,
                 "sample": cfg.sample, "skipped_images": dataset.loaded.skipped} | dataset.described,
        "variants": variants,
        "timings": {"load_seconds": load_seconds, "downloaded": dataset.loaded.downloaded,
                    "decoded": dataset.loaded.decoded, "total_seconds": time.perf_counter() - started},
        "costs": job_costs(started, load_seconds, device, variants, dataset, source.traffic, folder.out.traffic),
        "environment": environment(device, precision) | {"eval_batch_size": pick_eval_batch(cfg.eval_batch_size, device)},
    }


def data_record(dataset: JobData) -> dict:
    """data.json (provenance.py): the data digest, every seed's split by name, the extra sets' digests."""
    splits = {seed: {split: [dataset.loaded.names[i] for i in r.tolist()] for split, r in rows.items()}
              for seed, rows in dataset.rows.items()}
    eval_digests = {name: e.described["data_digest"] for name, e in dataset.extra.items()
                    if "data_digest" in e.described}  # a --holdout set's images are among the job's own
    return provenance.data_record(dataset.manifest_digest, dataset.loaded.content, splits, eval_digests)


def job_costs(started: float, load_seconds: float, device: torch.device, variants: list[dict], dataset: JobData,
              reads: Traffic, writes: Traffic) -> dict:
    """What the job took (docs/operations.md, "Costs"): seconds of wall time, of loading the data and of
    the device training and evaluating (every seed behind the results, an earlier attempt's too);
    images decoded, objects and bytes read from the datasets and written to the results before
    metrics.json (this attempt's)."""
    seeds = [m.get("timings", {}) for v in variants for m in v["seeds"].values()]
    train, evaluation = (sum(t.get(k, 0.0) for t in seeds) for k in ("train_seconds", "eval_seconds"))
    sources = [reads] + [e.traffic for e in dataset.extra.values() if e.traffic]
    return {"device": device.type, "wall_seconds": time.perf_counter() - started, "data_seconds": load_seconds,
            "train_seconds": train, "eval_seconds": evaluation, "device_seconds": train + evaluation,
            "images_decoded": dataset.loaded.decoded + sum(e.decoded for e in dataset.extra.values()),
            "objects_read": sum(t.objects_read for t in sources), "bytes_read": sum(t.bytes_read for t in sources),
            "objects_written": writes.objects_written, "bytes_written": writes.bytes_written}


def read_dataset(source: Storage, cache, what: str = "dataset") -> tuple[dict[str, str], bytes, pd.DataFrame]:
    """The listing, the raw manifest and the parsed manifest of a dataset, with its near-duplicate
    groups (`near_dup_group`) joined on when `ratio-cnn data dedupe` left them beside it."""
    present = source.list_versions()
    if data.MANIFEST not in present:
        raise RatioCnnError(f"no {what} at {source.uri} ({data.MANIFEST} is missing): make one with "
                            f"`ratio-cnn data synth --out {source.uri}` or `ratio-cnn data ingest SRC --out {source.uri}`")
    raw_manifest = data.get_manifest(source, present[data.MANIFEST], cache)
    manifest = data.read_manifest(raw_manifest, source.describe(data.MANIFEST))
    if dedupe.SIDECAR in present:
        manifest = dedupe.attach_groups(manifest, source.get(dedupe.SIDECAR), source.describe(dedupe.SIDECAR))
    return present, raw_manifest, manifest


def load_data(cfg: TrainConfig, source: Storage, title: str) -> JobData:
    """Manifest, split, every seed's sample, then every image fetched and decoded once; the extra sets."""
    deadline = time.monotonic() + cfg.data_deadline
    log.info("%s: reading the dataset at %s", title, source.uri)
    present, raw_manifest, manifest = read_dataset(source, cfg.cache_dir)
    data.check_columns(manifest, cfg, source.uri)
    pool, held = data.hold_out(manifest, cfg.holdout) if cfg.holdout else (manifest, manifest.iloc[:0])
    samples = {seed: data.split_and_sample(pool, cfg, source.uri, seed if cfg.sample == "per-seed" else None)
               for seed in cfg.seeds}
    first = samples[cfg.seeds[0]]
    data.check_images_exist(source, present, [s["train"] for s in samples.values()] + [first["val"], first["test"], held])
    log.info("%s: %s", title, ", ".join(f"{s} {c['malignant']} malignant + {c['benign']} benign"
                                         for s, c in data.class_counts(first).items()))
    # Val, test, then training images: each split of the first sample is one run of rows, a view of
    # the decoded set rather than a copy (later seeds' other samples, with --sample per-seed, are copies).
    needed = list(dict.fromkeys([n for split in ("val", "test", "train") for s in samples.values()
                                 for n in s[split]["image"]] + list(held["image"])))
    data.check_memory(len(needed), torch.device("cpu"))
    loaded = data.load_images(source, manifest, needed, present, cfg.cache_dir, data.digest(raw_manifest),
                              cfg.workers, deadline, cfg.max_skipped, cfg.cache_max_gb)
    label_of = dict(zip(manifest["image"], manifest["label"].map(LABELS)))
    labels = torch.tensor([label_of[n] for n in loaded.names], dtype=torch.float32)
    rows = {seed: {split: loaded.rows(df["image"]) for split, df in s.items()} for seed, s in samples.items()}
    counts = {split: label_counts(labels[r]) for split, r in rows[cfg.seeds[0]].items()}
    metadata = manifest.set_index("image")[data.metadata_columns(manifest)]
    trained = {loaded.content[n] for s in samples.values() for n in s["train"]["image"] if n in loaded.content}
    extra = {}
    if cfg.holdout:
        held_split = select_rows(loaded.images, labels, loaded.names, loaded.rows(held["image"]), metadata)
        extra[holdout_name(cfg.holdout)] = EvalSet(held_split, {
            "uri": source.uri, "holdout": cfg.holdout, "counts": label_counts(held_split.labels),
            "overlap_with_train": sum(loaded.content.get(n) in trained for n in held_split.names)})
    for item in cfg.eval_data:
        name, _, uri = item.partition("=")
        extra[name] = load_eval_set(cfg, name, uri, trained, deadline)
    described = {"columns": data.metadata_columns(manifest), "train_values": data.train_values(first["train"], manifest),
                 "split": describe_split(cfg, manifest, first),
                 "eval_sets": {name: e.described for name, e in extra.items()}}
    return JobData(loaded, labels, rows, counts, data.digest(raw_manifest), metadata, described, extra)


def holdout_name(holdout: str) -> str:
    """The evaluation set that --holdout COL=VALUE makes: holdout-COL-VALUE."""
    return "holdout-" + "-".join(holdout.split("=", 1))


def describe_split(cfg: TrainConfig, manifest: pd.DataFrame, sets: dict[str, pd.DataFrame]) -> dict:
    """How the split was made, and how many val/test images have a near-duplicate in training."""
    twins = None
    if dedupe.GROUP_COLUMN in manifest.columns:
        counts = data.twins_in_training(sets, dedupe.GROUP_COLUMN)
        twins = {"column": dedupe.GROUP_COLUMN, "grouped": cfg.group_by == dedupe.GROUP_COLUMN,
                 "val_with_twin_in_train": counts["val"], "test_with_twin_in_train": counts["test"]}
    return {"rule": "stable-hash", "group_by": cfg.group_by or None, "holdout": cfg.holdout or None,
            "near_duplicates": twins}


def load_eval_set(cfg: TrainConfig, name: str, uri: str, trained: set[str], deadline: float) -> EvalSet:
    """An --eval-data set, decoded; the images it shares with training (same bytes) are counted."""
    source = open_storage(uri, timeout=cfg.storage_timeout)
    present, raw_manifest, manifest = read_dataset(source, cfg.cache_dir, f"--eval-data {name} dataset")
    classes = set(manifest["label"])
    if len(classes) < 2:
        raise RatioCnnError(f"--eval-data {name}: {source.describe(data.MANIFEST)} lists only {classes.pop()} images: "
                            "an evaluation set needs both malignant and benign ones")
    data.check_images_exist(source, present, [manifest])
    data.check_memory(len(manifest), torch.device("cpu"))
    loaded = data.load_images(source, manifest, list(manifest["image"]), present, cfg.cache_dir,
                              data.digest(raw_manifest), cfg.workers, deadline, cfg.max_skipped, cfg.cache_max_gb)
    label_of = dict(zip(manifest["image"], manifest["label"].map(LABELS)))
    labels = torch.tensor([label_of[n] for n in loaded.names], dtype=torch.float32)
    overlap = sum(loaded.content.get(n) in trained for n in loaded.names)
    if overlap:
        log.warning("--eval-data %s: %d of its %d images are also training images (same bytes): the report says so",
                    name, overlap, len(loaded.names))
    split = Split(loaded.images, labels, loaded.names, manifest.set_index("image")[data.metadata_columns(manifest)]
                  .reindex(loaded.names))
    return EvalSet(split, {"uri": source.uri, "counts": label_counts(labels), "overlap_with_train": overlap,
                           "skipped_images": loaded.skipped,
                           "data_digest": provenance.data_digest(data.digest(raw_manifest), loaded.content)},
                   loaded.decoded, source.traffic)


def select_rows(images: torch.Tensor, labels: torch.Tensor, names: list[str], rows: torch.Tensor,
                metadata: pd.DataFrame) -> Split:
    """These rows of the decoded set: a view when they are one run (no copy), else a copy."""
    split_names = [names[i] for i in rows.tolist()]
    rows_metadata = metadata.reindex(split_names)
    if len(rows) and bool((rows == torch.arange(rows[0], rows[0] + len(rows))).all()):
        run = slice(int(rows[0]), int(rows[0]) + len(rows))
        return Split(images[run], labels[run], split_names, rows_metadata)
    rows = rows.to(images.device)
    return Split(images[rows], labels[rows], split_names, rows_metadata)


# -----------------------------------------------------------------------------
# one seed: its replicate trained, evaluated, its outputs written


def run_seed(cfg: TrainConfig, folder: JobFolder, strategy: str, model_name: str, seed: int,
             splits: dict[str, Split], extra: dict[str, EvalSet], precision: str,
             title: str) -> tuple[dict, pd.DataFrame]:
    """One replicate: train (from its checkpoint when resuming), evaluate, write its outputs; its
    metrics.json and its history (one row per epoch)."""
    variant = variant_folder(strategy, model_name)
    if cfg.resume and (done := folder.seed_done(variant, seed) or folder.upload_staged(variant, seed)):
        log.info("%s: done by an earlier attempt", title)
        return done, folder.seed_history(variant, seed)
    started = time.perf_counter()
    train, val, test = splits["train"], splits["val"], splits["test"]
    replicate = build_replicate(model_name, strategy, seed, train.images, train.labels, cfg.lr, precision,
                                cfg.synthetic_malignant)
    trained = train_replicate(cfg, folder, variant, seed, replicate, val, title)
    train_seconds = time.perf_counter() - started

    # -------------------------------------------------------------------------
    # evaluation of the final model: val from the last epoch, test and every extra set now
    started = time.perf_counter()
    eval_batch = pick_eval_batch(cfg.eval_batch_size, test.images.device)
    test_metrics, test_logits = evaluate(replicate.model, test.images, test.labels, eval_batch, cfg.threshold,
                                         precision)
    extra_results = {name: evaluate(replicate.model, e.split.images, e.split.labels, eval_batch, cfg.threshold,
                                    precision) for name, e in extra.items()}
    eval_seconds = time.perf_counter() - started
    log.info("%s test: loss %.4f acc %.3f precision %.3f recall %.3f F1 %.3f ROC-AUC %s", title,
             test_metrics["loss"], test_metrics["accuracy"], test_metrics["precision"], test_metrics["recall"],
             test_metrics["f1"], "n/a" if test_metrics["roc_auc"] is None else f"{test_metrics['roc_auc']:.3f}")

    # -------------------------------------------------------------------------
    # outputs: staged here, uploaded with the seed's metrics.json last
    plan = replicate.plan
    metrics = {"seed": seed, "strategy": strategy, "model": model_name, "val": trained.val, "test": test_metrics,
               "train": {**label_counts(plan.labels), "odds": plan.train_odds},
               "timings": {"train_seconds": train_seconds, "eval_seconds": eval_seconds,
                           "epochs_trained": trained.epochs_trained,
                           "train_images_per_second": trained.epochs_trained * len(plan.labels)
                           / max(train_seconds, 1e-9)}}
    if extra:
        metrics["eval"] = {name: m for name, (m, _) in extra_results.items()}
    history = pd.DataFrame(trained.history)
    predicted = {"val": (val, trained.val_logits), "test": (test, test_logits)} | {
        f"eval:{name}": (extra[name].split, logits) for name, (_, logits) in extra_results.items()}
    keep_weights = cfg.save_models == "all" or (cfg.save_models == "first" and seed == cfg.seeds[0])
    files = seed_files(history, predicted, replicate.model if keep_weights else None)
    folder.write_seed(variant, seed, files, metrics)
    return metrics, history


def train_replicate(cfg: TrainConfig, folder: JobFolder, variant: str, seed: int, replicate: Replicate,
                    val: Split, title: str) -> TrainedReplicate:
    """Train for cfg.epochs, from the seed's checkpoint when resuming; validate after every epoch."""
    model, optimizer = replicate.model, replicate.optimizer
    first_epoch, history = 1, []
    if cfg.resume and (saved := folder.load_checkpoint(variant, seed)) is not None:
        try:
            last, history = checkpoint.unpack(saved, folder.describe_checkpoint(variant, seed), model, optimizer,
                                              replicate.generators, folder.trained_on(seed))
            first_epoch = last + 1
            log.info("%s: resuming after epoch %d", title, last)
        except checkpoint.UnloadableCheckpoint as e:  # nothing was restored: the replicate is as built
            log.warning("%s: %s; kept as %s, training the seed from its first epoch", title, e,
                        folder.set_checkpoint_aside(variant, seed, saved))
    eval_batch = pick_eval_batch(cfg.eval_batch_size, val.images.device)

    last_checkpoint = time.monotonic()
    for epoch in range(first_epoch, cfg.epochs + 1):
        epoch_started = time.perf_counter()
        train = train_one_epoch(model, optimizer, replicate.plan, cfg.batch_size, replicate.order_generator,
                                replicate.device_generator, replicate.precision,
                                description=f"{title} epoch {epoch}/{cfg.epochs}")
        val_metrics, val_logits = evaluate(model, val.images, val.labels, eval_batch, cfg.threshold, replicate.precision)
        history.append({"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                        "val_loss": val_metrics["loss"], "val_accuracy": val_metrics["accuracy"],
                        "val_roc_auc": val_metrics["roc_auc"], "seconds": time.perf_counter() - epoch_started})
        log.info("%s epoch %d/%d: train loss %.4f acc %.3f | val loss %.4f acc %.3f", title, epoch, cfg.epochs,
                 train["loss"], train["accuracy"], val_metrics["loss"], val_metrics["accuracy"])
        folder.check_owner()
        if epoch < cfg.epochs and time.monotonic() - last_checkpoint >= cfg.checkpoint_every:
            folder.save_checkpoint(variant, seed, checkpoint.pack(model, optimizer, epoch, history,
                                                                  replicate.generators, folder.trained_on(seed)))
            last_checkpoint = time.monotonic()
    return TrainedReplicate(history, val_metrics, val_logits, cfg.epochs - first_epoch + 1)


def seed_files(history: pd.DataFrame, predicted: dict[str, tuple[Split, np.ndarray]], model: nn.Module | None) -> dict:
    """A seed's outputs as bytes: history.csv, predictions.csv (label, logit and probability of every
    image of each predicted split, then the image's metadata columns) and, given a model, model.pt."""
    predictions = pd.concat([
        pd.DataFrame({"split": split, "image": s.names,
                      "label": np.where(s.labels.cpu().numpy() == 1, "malignant", "benign"),
                      "logit": logits.astype(np.float64), "probability": sigmoid(logits)}
                     | {column: s.metadata[column].fillna("").to_numpy() for column in s.metadata.columns})
        for split, (s, logits) in predicted.items()])
    files = {"history.csv": history.to_csv(index=False).encode(),
             "predictions.csv": predictions.to_csv(index=False).encode()}
    if model is not None:
        files[WEIGHTS] = weights_bytes(model)
    return files


def weights_bytes(model: nn.Module) -> bytes:
    """The model's state_dict in bf16: half the bytes of fp32. Every number of the report comes from
    predictions.csv, made by the fp32 model in memory; reloaded bf16 weights give probabilities within
    a few thousandths of those (tests/test_operations.py, docs/operations.md). `load_state_dict` casts
    them back, so `SimpleCNN().load_state_dict(torch.load(path, weights_only=True))` still loads them."""
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)  # loads with weights_only=True
    return buffer.getvalue()


# -----------------------------------------------------------------------------
# a variant's figures and summary, the job's environment


def write_variant_figures(folder: JobFolder, variant: str, seed_metrics: dict[int, dict],
                          histories: dict[int, pd.DataFrame], title: str) -> None:
    """The confusion matrices and curves of the first seed, and the curves of every seed."""
    first = next(iter(seed_metrics))
    with tempfile.TemporaryDirectory(prefix="ratio-cnn-") as tmp:
        figures = {
            "confusion_matrix.png": lambda p: plots.confusion_matrices(
                {s: seed_metrics[first][s] for s in ("val", "test")}, f"{title}, seed {first}", p),
            "curves.png": lambda p: plots.training_curves(histories[first], f"{title}, seed {first}", p),
            "curves_by_seed.png": lambda p: plots.training_curves_by_seed(histories, title, p),
        }
        for name, draw in figures.items():
            path = Path(tmp) / name
            draw(path)
            folder.put(variant, name, data=path.read_bytes())


def intervals_over_seeds(seed_metrics: dict[int, dict]) -> dict:
    """metrics.json's `summary` of a variant: for every metric of val and test, the mean over seeds
    with a 95% t interval (stats.seed_interval, as the report's)."""
    intervals = {split: {metric: seed_interval([m[split][metric] for m in seed_metrics.values()],
                                               None if metric == "loss" else 1.0) for metric in METRICS}
                 for split in ("val", "test")}
    return {split: {metric: i and i.to_dict() for metric, i in by_metric.items()} for split, by_metric in intervals.items()}


def label_counts(labels: torch.Tensor) -> dict:
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

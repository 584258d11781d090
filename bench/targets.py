"""The issue's targets, the ratio reached against each, and where memory runs out.

`reached` is measured / target for an "at least" target and target / measured for an "at
most" one: 1.0 or more means met. A missed target says why, from the measured numbers.
"""
import numpy as np

from ratio_cnn.config import StudyOptions

GPU_COMMAND = ("ratio-cnn data ingest ../shared/data/isic-dermoscopy --out data/isic && "
               "python -m bench.gpu --data data/isic --val-benign 500 --test-benign 500")
NO_GPU = ("no GPU was available to this session; GPU figures are still to be measured: on a CUDA machine run "
          f"`{GPU_COMMAND}`")
GPU_MEMORY = 80e9  # an H100's 80 GB
# Evaluation at batch 256 holds two (256, 32, 128, 128) fp32 tensors at once (a layer's input and output).
EVAL_ACTIVATIONS = 2 * 256 * 32 * 128 * 128 * 4
MB = 1e6


def _row(target: str, measured: str, reached: float | None, met: bool | None, why: str = "") -> dict:
    return {"target": target, "measured": measured, "reached": reached, "met": met, "why": "" if met else why}


def _at_least(target: str, measured: str, value: float, goal: float, why: str) -> dict:
    return _row(target, measured, value / goal, value >= goal, why)


def evaluate(results: dict, gpu: dict | None) -> list[dict]:
    return [warm_rerun(results["s3"]), cache_checks(results["checks"]), cold_pull(results["s3"]), loop(results["loop"]),
            study(results["study"], results["loop"]),
            memory(results["scale"]), make_study(results["make_study_seconds"]), *gpu_targets(gpu)]


def warm_rerun(s3: dict) -> dict:
    t = s3["warm"]["result"]["timings"]
    met = t["downloaded"] == 0 and t["decoded"] == 0
    return _row("warm re-run: 0 objects downloaded, 0 images decoded",
                f"{t['downloaded']} downloaded, {t['decoded']} decoded", None, met,
                "the decode cache did not cover the re-run: see the S3 table")


def cache_checks(checks: dict) -> dict:
    r = checks["result"]
    share = max(r["checks_share"], 1e-9)  # a check lost in the noise still reads as met
    return _row("warm re-run: checking every decoded row read from the cache ≤ 10% of the warm data phase",
                f"{r['checks_seconds'] * 1000:.0f} ms of {r['warm_load_seconds']:.2f} s ({r['checks_share']:.1%}), "
                f"{r['images']} images", 0.10 / share, r["checks_share"] <= 0.10,
                f"reading {r['images']} rows took {r['read_checked_seconds'] * 1000:.0f} ms checked and "
                f"{r['read_unchecked_seconds'] * 1000:.0f} ms unchecked; the rest of the phase lists the dataset, "
                "reads the manifest and splits it")


def pull_rate(run: dict) -> float:
    """Images a job needs per second of its data phase (listing, manifest, fetch, decode, cache writes)."""
    return run["result"]["images"] / run["result"]["timings"]["load_seconds"]


def cold_pull(s3: dict) -> dict:
    cold, ceiling = pull_rate(s3["cold"]), s3["get_many_objects_per_second"]
    why = (f"the cold data phase lists, fetches, decodes and caches; moto alone served {ceiling:.0f} objects/s to the "
           f"same client ({s3['workers']} connections, nothing else done), so the phase reached "
           f"{cold / ceiling:.0%} of what the server gave")
    if ceiling < 400:
        why += "; the server itself stayed under 400/s on this machine during the run"
    return _at_least("cold pull from the local moto server ≥ 400 objects/s", f"{cold:.0f} objects/s", cold, 400, why)


def loop(loops: dict) -> dict:
    ours, theirs = loops["best"]["ratio-cnn"], loops["best"]["naive"]
    rounds = loops["runs"]["naive"]
    spread = max(max(r["train_images_per_second"] for r in runs) / min(r["train_images_per_second"] for r in runs) - 1
                 for runs in loops["runs"].values())
    why = (f"a training step costs {1000 / ours['train_images_per_second']:.0f} ms per image in ratio-cnn's loop and "
           f"{1000 / theirs['train_images_per_second']:.0f} ms in the naive one, whose loader alone takes "
           f"{1000 / theirs['loader_images_per_second']:.1f} ms: on a CPU the model costs most of a step; "
           + (f"rounds of one loop varied by up to {spread:.0%} on this shared machine" if len(rounds) > 1
              else "one round only"))
    return _at_least("CPU training throughput of a job ≥ the naive baseline's",
                     f"{ours['train_images_per_second']:.1f} vs {theirs['train_images_per_second']:.1f} images/s",
                     ours["train_images_per_second"], theirs["train_images_per_second"], why)


def loader_share(loops: dict) -> float:
    """The share of a naive training step spent opening, decoding and normalising its images."""
    naive = loops["best"]["naive"]
    return naive["train_images_per_second"] / naive["loader_images_per_second"]


def best_study(study: dict) -> tuple[str, dict]:
    """The fastest ratio-cnn variant of the whole study."""
    return min(((name, run) for name, run in study["runs"].items() if name != "naive"), key=lambda r: r[1]["seconds"])


def study(study_results: dict, loops: dict) -> dict:
    naive_seconds = study_results["runs"]["naive"]["seconds"]
    name, run = best_study(study_results)
    speedup = naive_seconds / run["seconds"]
    best = loops["best"]
    loop_speedup = best["ratio-cnn"]["train_images_per_second"] / best["naive"]["train_images_per_second"]
    why = (f"decoding once saves about the naive loader's share of a training step, {loader_share(loops):.0%} here "
           f"(loop table); the rest is the training step itself, where ratio-cnn's loop trains at {loop_speedup:.2f}× "
           f"the baseline ({loops['runs']['ratio-cnn'][0]['precision']}, fused Adam), and a study is mostly training steps; "
           "beside them ratio-cnn's jobs also claim their folder and write figures, predictions and a model per seed"
           + (f"; with `--precision bf16` (opt-in on a CPU) its loop trained at "
              f"{best['ratio-cnn, bf16']['train_images_per_second'] / best['naive']['train_images_per_second']:.2f}× "
              "the baseline on this CPU" if "ratio-cnn, bf16" in best else ""))
    return _row("whole study ≥ 1.5× faster than the baseline",
                f"{speedup:.2f}× ({run['seconds']:.0f} s, {name}, vs {naive_seconds:.0f} s)", speedup / 1.5,
                speedup >= 1.5, why)


def memory_budget(row: dict, model_and_optimizer: int, image_bytes: int) -> int:
    """The target's bound: twice the job's decoded images, plus the model and optimizer state."""
    return 2 * row["result"]["images"] * image_bytes + model_and_optimizer


def memory_reached(row: dict, scale: dict) -> float:
    """Budget / the job's own memory (its peak less what the process held before it started)."""
    budget = memory_budget(row, scale["model_and_optimizer_bytes"], scale["image_bytes"])
    return budget / (row["peak_rss_bytes"] - row["rss_before_bytes"])


def memory(scale: dict) -> dict:
    row = next(r for r in scale["rows"] if r["scale"] == 1)
    largest = max(scale["rows"], key=lambda r: r["scale"])
    large_eval = scale["large_eval_1x"]
    budget = memory_budget(row, scale["model_and_optimizer_bytes"], scale["image_bytes"])
    own, reached = row["peak_rss_bytes"] - row["rss_before_bytes"], memory_reached(row, scale)
    why = (f"costs that do not grow with the data outweigh this job's "
           f"{row['result']['images'] * scale['image_bytes'] / MB:,.0f} MB of decoded images: evaluation at batch "
           f"{row['result']['eval_batch_size']} (peak {row['peak_rss_bytes'] / MB:,.0f} MB; the same job evaluating "
           f"at batch {large_eval['result']['eval_batch_size']}: {large_eval['peak_rss_bytes'] / MB:,.0f} MB), and "
           f"a training step's activations, gradients and Adam's temporaries; at {largest['scale']}× the ratio "
           f"reached is {memory_reached(largest, scale):.2f}")
    return _row("peak RSS of a job ≤ 2× its decoded images + model and optimizer state (1:1 job, study's size)",
                f"{own / MB:,.0f} MB over the {row['rss_before_bytes'] / MB:,.0f} MB of Python and libraries "
                f"(peak {row['peak_rss_bytes'] / MB:,.0f} MB) vs {budget / MB:,.0f} MB",
                reached, reached >= 1, why)


def make_study(seconds: float | None) -> dict:
    target = f"CPU: `make study` ({StudyOptions.CPU_SEEDS} seeds per ratio) ≤ 10 minutes on 2 cores"
    if seconds is None:
        return _row(target, "measured separately, see README", None, None,
                    "not timed by the bench: time `make study` and pass `--make-study-seconds`")
    return _row(target, f"{seconds / 60:.1f} min", 600 / seconds, seconds <= 600,
                f"the study trains 4 ratios × {StudyOptions.CPU_SEEDS} seeds × {StudyOptions.CPU_EPOCHS} epochs on 2 cores; see the loop table "
                "for images/s")


def gpu_targets(gpu: dict | None) -> list[dict]:
    loop_target = "GPU: batch 32, one model ≥ 15,000 training images/s in the job's loop (stretch 20,000)"
    study_target = ("GPU: whole ISIC study (4 ratios × 5 seeds × 5 epochs, one process, warm cache) "
                    "≤ 10 s of job time")
    if gpu is None:
        return [_row(target, "not measured", None, None, NO_GPU) for target in (loop_target, study_target)]
    best = max(gpu["loop"]["ratio-cnn"].values(), key=lambda r: r["train_images_per_second"])
    rows = [_at_least(loop_target, f"{best['train_images_per_second']:,.0f} images/s ({best['precision']})",
                      best["train_images_per_second"], 15000, "see the GPU table")]
    if gpu.get("study") is None:
        rows.append(_row(study_target, "not measured", None, None,
                         f"bench.gpu ran without --data: run `{GPU_COMMAND}`"))
    else:
        seconds = min(run["seconds"] for run in gpu["study"]["runs"].values())
        rows.append(_row(study_target, f"{seconds:.1f} s", 10 / seconds, seconds <= 10, "see the GPU table"))
    return rows


def memory_limits(scale: dict, ram_bytes: int) -> dict:
    """Where the job's memory runs out: a line through (images held, peak RSS) of the scale runs,
    solved for this machine's RAM; and the same bound worked out for an 80 GB GPU."""
    images = np.array([r["result"]["images"] for r in scale["rows"]], dtype=float)
    peaks = np.array([r["peak_rss_bytes"] for r in scale["rows"]], dtype=float)
    per_image, fixed = np.polyfit(images, peaks, 1)
    at_1x = next(r for r in scale["rows"] if r["scale"] == 1)["result"]["images"]
    ram_images = (ram_bytes - fixed) / per_image
    # On a GPU the decoded set sits there once (its splits are views), beside the model, Adam and evaluation.
    gpu_images = (GPU_MEMORY - scale["model_and_optimizer_bytes"] - EVAL_ACTIVATIONS) / scale["image_bytes"]
    return {"bytes_per_image": per_image, "fixed_bytes": fixed, "ram_bytes": ram_bytes,
            "ram_images": ram_images, "ram_scale": ram_images / at_1x,
            "gpu_bytes": GPU_MEMORY, "gpu_images": gpu_images, "gpu_scale": gpu_images / at_1x}

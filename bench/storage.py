"""What one night of the default study writes, by --save-models: `python -m bench.storage`.

The default nightly study's outputs: ratios 1, 2, 3 and 5, 5 seeds each, val and test of 50 + 1000
images (what a night writes grows with these: predictions, metrics, weights, figures). Each job
trains on 20 malignant images for one epoch so that the whole night fits a CPU in minutes; the
training set's size and the epochs change no file's size but history.csv's few rows. The same
night runs twice on the synthetic dataset, `--save-models all` and `first`; prints and writes
bench/results/storage.json: bytes by kind of file, and whether the two reports' numbers are identical
(the reports, but for the run id and the Costs section). Before issue 16 every seed kept its weights
in fp32 (`torch.save` of the state_dict, as `fp32_weights` measures it here): "before" is the `all`
night with each model.pt at that size, and `first_share` what `first` writes of it.
"""
import io
import json
import logging
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from ratio_cnn.config import TrainConfig
from ratio_cnn.model import SimpleCNN
from ratio_cnn.job import run_job
from ratio_cnn.report import write_report
from ratio_cnn.synth import make_synthetic_dataset

RESULTS = Path(__file__).parent / "results" / "storage.json"
RATIOS = (1, 2, 3, 5)
NIGHT = dict(seeds=5, epochs=1, train_malignant=20, device="cpu")  # val and test: TrainConfig's 50 + 1000


def kind(path: Path) -> str:
    return path.name if path.suffix in (".pt", ".csv", ".json") else "figures (.png) and report.md"


def report_numbers(markdown: str) -> str:
    """The report but for its title (the run id) and its Costs section (seconds differ between runs)."""
    body = markdown.split("\n", 2)[2]
    start = body.index("## Costs")
    return body[:start] + body[body.index("\n## ", start) + 1:]


def night(data: str, out: Path, save_models: str) -> tuple[Counter, str, float]:
    started = time.perf_counter()
    for ratio in RATIOS:
        run_job(TrainConfig(ratio=ratio, data=data, out=str(out), run_id="night", save_models=save_models,
                            cache=str(out.parent / "cache"), **NIGHT))
    markdown = write_report(str(out / "night")).markdown
    sizes = Counter()
    for path in (out / "night").rglob("*"):
        if path.is_file():
            sizes[kind(path)] += path.stat().st_size
    return sizes, markdown, time.perf_counter() - started


def fp32_weights() -> int:
    """The bytes of one seed's model.pt before issue 16: SimpleCNN's fp32 state_dict, torch.save'd."""
    buffer = io.BytesIO()
    torch.save(SimpleCNN().state_dict(), buffer)
    return len(buffer.getvalue())


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ratio-cnn-bench-storage-") as tmp:
        data = str(Path(tmp) / "data")
        make_synthetic_dataset(data)
        nights = {keep: night(data, Path(tmp) / keep, keep) for keep in ("all", "first")}
    totals = {keep: sum(sizes.values()) for keep, (sizes, _, _) in nights.items()}
    seeds = len(RATIOS) * NIGHT["seeds"]
    totals["before"] = totals["all"] - nights["all"][0]["model.pt"] + seeds * fp32_weights()
    result = {
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), CPU",
        "night": {"ratios": RATIOS, **NIGHT, "val_test": "50 + 1000"},
        "bytes": {keep: dict(sizes) for keep, (sizes, _, _) in nights.items()},
        "fp32_weights": fp32_weights(),
        "total_bytes": totals,
        "first_share": totals["first"] / totals["before"],
        "identical_report_numbers": report_numbers(nights["first"][1]) == report_numbers(nights["all"][1]),
        "seconds": {keep: round(seconds) for keep, (_, _, seconds) in nights.items()},
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not result["identical_report_numbers"] or result["first_share"] >= 0.15:
        sys.exit("bench.storage: --save-models first must write under 15% of the bytes before issue 16, with "
                 "identical numbers")


if __name__ == "__main__":
    main()

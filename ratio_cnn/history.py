"""Nightly history: each run against the previous complete run on the same data and
configuration, and an index of every run under `<out>/`. The same data means the same data
digest: the manifest and the content of every image the jobs used (provenance.py).

Every report leaves a run record, `<out>/<run-id>/summary.json` (its data, configuration
and headline metrics); the index (`<out>/index.md`) is rebuilt from all of them, so two
studies finishing at once cannot lose an entry. A comparison pairs the two runs on test
images and seeds, like the report's other comparisons, and flags a drop whose interval lies
below zero.
"""
import hashlib
import json
import logging
from dataclasses import dataclass

from ratio_cnn.analysis import Analysis, analyse, compare
from ratio_cnn.config import OPERATIONAL
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.results import PRUNED, collect, load_json
from ratio_cnn.stats import Interval
from ratio_cnn.storage import Storage, join, open_storage

log = logging.getLogger(__name__)

RUN_RECORD = "summary.json"  # the file name older runs hold too
INDEX = "index.md"
TRENDS = "trends.png"  # beside index.md: the headline metrics across runs
HEADLINE = ("roc_auc", "average_precision", "f1", "recall")  # higher is better for each
PER_RUN = {"run_id", "ratio", "out"}  # differ between runs of one configuration


def config_key(config: dict) -> str:
    """What makes two runs comparable: every option that changes the numbers."""
    kept = {k: v for k, v in sorted(config.items()) if k not in OPERATIONAL | PER_RUN}
    return "sha256:" + hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def run_record(run_id: str, finished: str, complete: bool, a: Analysis, first_metrics: dict) -> dict:
    """What the index and the next run's comparison need of this run."""
    headline = {f"{cell.label} {name}": {m: cell.seed_intervals["test"][m].to_dict() for m in HEADLINE}
                for (ratio, name), cell in a.cells.items()}
    return {"run_id": run_id, "finished": finished, "complete": complete,
            "data": {"uri": first_metrics["data"]["uri"], "manifest_digest": first_metrics["data"]["manifest_digest"],
                     "data_digest": first_metrics["data"].get("data_digest")},  # jobs before issue 15 lack it
            "config_key": config_key(first_metrics["config"]), "config": first_metrics["config"],
            "ratios": [c.label for c in a.cells.values()], "headline": headline, "costs": a.costs.get("run")}


def run_records(out: Storage) -> list[dict]:
    """Every run's record under `out`, oldest first; unreadable ones are skipped. A run that `ratio-cnn
    prune` has worked on is marked `"pruned": true` here (its predictions may be gone)."""
    found, keys = [], out.list()
    pruned = {key.split("/")[0] for key in keys if key.count("/") == 1 and key.endswith("/" + PRUNED)}
    for key in keys:
        parts = key.split("/")
        if len(parts) == 2 and parts[1] == RUN_RECORD:
            try:
                found.append(load_json(out, key) | {"pruned": parts[0] in pruned})
            except RatioCnnError as e:  # a damaged record must not hide the others
                log.warning("left out of the index: %s", e)
    return sorted(found, key=lambda s: str(s.get("finished", "")))


def previous_run(out: Storage, current: dict) -> dict | None:
    """The newest complete run before this one on the same data and configuration that still holds its
    predictions (not pruned)."""
    same = [s for s in run_records(out) if s.get("complete") and not s["pruned"] and s.get("run_id") != current["run_id"]
            and current["data"]["data_digest"] and s.get("data", {}).get("data_digest") == current["data"]["data_digest"]
            and s.get("config_key") == current["config_key"] and str(s.get("finished")) < current["finished"]]
    return same[-1] if same else None


@dataclass
class Change:
    cell: str  # "1:3 none/simple"
    metric: str
    previous: float
    current: float
    difference: Interval  # current - previous, paired on test images and seeds

    @property
    def regression(self) -> bool:
        return self.difference.high is not None and self.difference.high < 0


def compare_runs(out: Storage, previous_id: str, a: Analysis) -> list[Change]:
    """Each headline metric of every (ratio, variant) both runs hold: current - previous."""
    run = open_storage(join(out.uri, previous_id))
    _, results = collect(run)
    old = analyse(run, results, next(r for r in results if r.metrics).metrics["config"]["threshold"], checks=False)
    changes = []
    for key, cell in a.cells.items():
        if key in old.cells:
            before = old.cells[key]
            differences = compare(cell, before, cell.label, before.label, "at_threshold").differences
            changes += [Change(f"{cell.label} {key[1]}", m, before.seed_intervals["test"][m].mean,
                               cell.seed_intervals["test"][m].mean, differences[m]) for m in HEADLINE]
    return changes


def first_variants(record: dict) -> dict[str, dict]:
    """The headline metrics of each ratio's first variant in a run record: "1:3" -> metric -> interval."""
    firsts = {}
    for cell, metrics in record.get("headline", {}).items():
        firsts.setdefault(cell.split(" ")[0], metrics)
    return firsts


@dataclass
class Trends:
    """The index's figure: each headline metric of each ratio's first variant across runs, oldest first."""

    runs: list[str]  # each run's finished date and id
    points: dict[str, dict[str, list[tuple]]]  # metric -> "1:3" -> [(run position, mean, low, high)]
    data_changes: list[int]  # positions of runs whose data digest differs from the run before
    config_changes: list[int]  # likewise for the configuration key
    regressions: list[int]  # positions of runs that flagged a regression


def trend_series(records: list[dict]) -> Trends:
    points: dict[str, dict[str, list[tuple]]] = {m: {} for m in HEADLINE}
    for i, record in enumerate(records):
        for ratio, metrics in first_variants(record).items():
            for m in HEADLINE:
                interval = metrics.get(m) or {}
                if isinstance(interval.get("mean"), (int, float)):
                    points[m].setdefault(ratio, []).append((i, interval["mean"], interval.get("low"), interval.get("high")))

    def changed(i: int, what) -> bool:
        return i > 0 and what(records[i]) != what(records[i - 1])

    return Trends([f"{str(r.get('finished', ''))[:10]} {r.get('run_id')}" for r in records],
                  {m: lines for m, lines in points.items() if lines},
                  [i for i in range(len(records)) if changed(i, lambda r: r.get("data", {}).get("data_digest"))],
                  [i for i in range(len(records)) if changed(i, lambda r: r.get("config_key"))],
                  [i for i, r in enumerate(records) if r.get("regressions")])


def render_index(runs: list[dict], with_trends: bool = False) -> str:
    lines = ["# Every ratio-study run", ""]
    if with_trends:
        lines += [f"![Headline metrics across runs]({TRENDS})", ""]
    lines += ["Newest first. Headline: test ROC-AUC and AP of each ratio's first variant, mean over seeds. "
              "Runs with the same configuration key are comparable. Costs: device seconds and bytes written, summed "
              "over the run's jobs (its report's Costs section has the rest).", "",
              "| run | finished | complete | data (manifest) | configuration | headline | device | written |",
              "|---|---|---|---|---|---|---|---|"]
    for s in reversed(runs):
        cfg = s.get("config", {})
        described = (f"{cfg.get('epochs')} epochs, seeds {len(cfg.get('seeds', []))}, "
                     f"{','.join(cfg.get('strategies', []))} × {','.join(cfg.get('models', []))} "
                     f"(`{str(s.get('config_key', ''))[7:15]}`)")
        headline = "; ".join(f"{ratio} {m['roc_auc']['mean']:.3f}/{m['average_precision']['mean']:.3f}"
                             for ratio, m in first_variants(s).items())
        if s.get("regressions"):
            headline += " ⚠ regression"
        costs = s.get("costs") or {}
        spent = (f"{costs['device_seconds']:.0f} s {costs.get('device', '')} | {costs['bytes_written'] / 1e6:,.1f} MB"
                 if costs else "n/a | n/a")
        lines.append(f"| `{s.get('run_id')}` | {str(s.get('finished'))[:19]} | {'yes' if s.get('complete') else 'no'} | "
                     f"`{str(s.get('data', {}).get('manifest_digest', ''))[7:19]}` | {described} | {headline} | {spent} |")
    return "\n".join(lines) + "\n"

"""The study's markdown report, built only from what the jobs of one run wrote.

A run folder `<out>/<run-id>/` holds `run.json` (the ratios the study asked for, written
by the flow; optional) and one `ratio-<N>/` per job with `metrics.json` when it
finished or `error.json` when it failed. `write_report` adds `metrics_by_ratio.png` and
`report.md` there.
"""
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ratio_cnn import plots
from ratio_cnn.config import ratio_name
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.job import ERROR, METRICS
from ratio_cnn.storage import Storage, open_storage

RUN_FILE = "run.json"
REPORT = "report.md"
METRICS_FIGURE = "metrics_by_ratio.png"
SUMMARY_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision")


@dataclass
class RatioResult:
    ratio: float
    metrics: dict | None  # metrics.json when the job finished
    failure: str | None  # why not, when it did not

    @property
    def folder(self) -> str:
        return f"ratio-{ratio_name(self.ratio)}"


def collect(run: Storage) -> tuple[dict, list[RatioResult]]:
    """Every ratio of the run: asked for in run.json, or found as a ratio-<N>/ folder."""
    meta = json.loads(run.get(RUN_FILE)) if run.exists(RUN_FILE) else {}
    keys = run.list()
    found = {float(m.group(1)) for k in keys if (m := re.match(r"ratio-([0-9.]+)/", k))}
    ratios = sorted(found | {float(r) for r in meta.get("ratios", [])})
    if not ratios:
        raise RatioCnnError(f"{run.uri} holds no ratio-<N>/ folders: is it a run folder (<out>/<run-id>)?")
    results = []
    for ratio in ratios:
        folder = f"ratio-{ratio_name(ratio)}"
        if f"{folder}/{METRICS}" in keys:
            results.append(RatioResult(ratio, json.loads(run.get(f"{folder}/{METRICS}")), None))
        elif f"{folder}/{ERROR}" in keys:
            results.append(RatioResult(ratio, None, json.loads(run.get(f"{folder}/{ERROR}"))["error"]))
        else:
            results.append(RatioResult(ratio, None, "no metrics.json: the job did not finish (it may still be running)"))
    return meta, results


def summary_rows(results: list[RatioResult]) -> list[dict]:
    rows = []
    for r in results:
        row = {"ratio": f"1:{ratio_name(r.ratio)}", "status": "ok" if r.metrics else "failed"}
        if r.metrics:
            train = r.metrics["data"]["counts"]["train"]
            row |= {"train_malignant": train["malignant"], "train_benign": train["benign"]}
            for split in ("val", "test"):
                row |= {f"{split}_loss": round(r.metrics[split]["loss"], 4)}
                row |= {f"{split}_{m}": _round(r.metrics[split][m]) for m in SUMMARY_METRICS}
        rows.append(row)
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def split_line(name: str, m: dict) -> str:
    """The study's own line: `Val Loss: … | Acc: …% | Precision: … | Recall: … | F1: …`."""
    return (f"{name} Loss: {m['loss']:.4f} | Acc: {100 * m['accuracy']:.2f}% | Precision: {m['precision']:.4f} | "
            f"Recall: {m['recall']:.4f} | F1: {m['f1']:.4f}")


def render_markdown(run_id: str, meta: dict, results: list[RatioResult]) -> str:
    done = [r for r in results if r.metrics]
    lines = [f"# Malignant:benign training ratio study — run `{run_id}`", ""]
    if done:
        first = done[0].metrics
        cfg, env = first["config"], first["environment"]
        lines += [
            f"Data: `{first['data']['uri']}` (manifest {first['data']['manifest_digest'][:19]}…). "
            f"SimpleCNN, {cfg['epochs']} epochs, batch {cfg['batch_size']}, Adam lr {cfg['lr']:g}, seed {cfg['seed']}, "
            f"threshold {cfg['threshold']:g}; {env['device']}, torch {env['torch']}.",
            "",
        ]
    lines += [f"{len(done)} of {len(results)} ratios finished.", "", "## Summary", ""]
    lines += ["| ratio | train (malignant + benign) | val loss | val F1 | val ROC-AUC | test loss | test acc | "
              "test precision | test recall | test F1 | test ROC-AUC | test AP |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if not r.metrics:
            lines.append(f"| 1:{ratio_name(r.ratio)} | failed | | | | | | | | | | |")
            continue
        m, train = r.metrics, r.metrics["data"]["counts"]["train"]
        v, t = m["val"], m["test"]
        lines.append(
            f"| 1:{ratio_name(r.ratio)} | {train['malignant']} + {train['benign']} | {v['loss']:.4f} | {v['f1']:.4f} | "
            f"{_fmt(v['roc_auc'])} | {t['loss']:.4f} | {100 * t['accuracy']:.2f}% | {t['precision']:.4f} | "
            f"{t['recall']:.4f} | {t['f1']:.4f} | {_fmt(t['roc_auc'])} | {_fmt(t['average_precision'])} |"
        )
    if done:
        lines += ["", f"![Metrics by ratio]({METRICS_FIGURE})"]
    for r in results:
        lines.append("")
        if not r.metrics:
            lines += [f"## 1:{ratio_name(r.ratio)} ratio — failed", "", f"Reason: {r.failure}"]
            continue
        train = r.metrics["data"]["counts"]["train"]
        skipped = r.metrics["data"]["skipped_images"]
        lines += [f"## 1:{ratio_name(r.ratio)} ratio ({train['malignant']} malignant, {train['benign']} benign)", "",
                  split_line("Val", r.metrics["val"]), "", split_line("Test", r.metrics["test"]), ""]
        if skipped:
            lines += [f"{len(skipped)} undecodable images skipped: {', '.join(skipped[:5])}", ""]
        lines += [f"![1:{ratio_name(r.ratio)} confusion matrices]({r.folder}/confusion_matrix.png)", "",
                  f"![1:{ratio_name(r.ratio)} training curves]({r.folder}/curves.png)"]
    return "\n".join(lines) + "\n"


@dataclass
class WrittenReport:
    uri: str  # of report.md
    markdown: str
    results: list[RatioResult]


def write_report(run_uri: str) -> WrittenReport:
    """Write metrics_by_ratio.png and report.md into the run folder."""
    run = open_storage(run_uri)
    meta, results = collect(run)
    run_id = meta.get("run_id") or run_uri.rstrip("/").rsplit("/", 1)[-1]
    rows = [row for row in summary_rows(results) if row["status"] == "ok"]
    if rows:
        with tempfile.TemporaryDirectory(prefix="ratio-cnn-report-") as tmp:
            path = Path(tmp) / METRICS_FIGURE
            plots.metrics_by_ratio(pd.DataFrame(rows), [r.ratio for r in results if r.metrics], path)
            run.put(METRICS_FIGURE, path.read_bytes())
    markdown = render_markdown(run_id, meta, results)
    run.put(REPORT, markdown.encode())
    return WrittenReport(run.describe(REPORT), markdown, results)

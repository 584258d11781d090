"""The study's markdown report, built only from what the jobs of one run wrote.

`write_report` reads the run folder (results.py), has every number computed by
analysis.py (through stats.py), draws the figures (plots.py), and writes `report.md`
beside them. `render` turns an analysis into that markdown: words and tables around
numbers it is given, no statistics and no I/O.
"""
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ratio_cnn import history, plots
from ratio_cnn.analysis import BASELINE, COMPARED, RESAMPLES, Analysis, Comparison, analyse
from ratio_cnn.config import ratio_name
from ratio_cnn.host import utc_now
from ratio_cnn.results import RatioResult, collect
from ratio_cnn.stats import Interval, verdict
from ratio_cnn.storage import Storage, basename, open_storage, parent

REPORT = "report.md"
FIGURES = {"metrics": "metrics_by_ratio.png", "roc": "roc.png", "pr": "pr.png"}
NAMES = {"loss": "loss", "accuracy": "accuracy", "precision": "precision", "recall": "recall", "f1": "F1",
         "roc_auc": "ROC-AUC", "average_precision": "AP"}


@dataclass
class WrittenReport:
    uri: str  # of report.md
    markdown: str
    results: list[RatioResult]
    analysis: Analysis | None
    changes: list[history.Change]  # against the previous comparable run, if any
    index: str  # <out>/index.md

    @property
    def regressions(self) -> list[history.Change]:
        return [c for c in self.changes if c.regression]


def write_report(run_uri: str) -> WrittenReport:
    """Write the figures, report.md and the run record (summary.json) into the run folder, and the index beside it.

    The run folder is `<out>/<run-id>`: the report compares it with the previous complete run
    under the same `<out>` on the same data and configuration, and rebuilds `<out>/index.md`.
    """
    run = open_storage(run_uri)
    meta, results = collect(run)
    run_id = str(meta.get("run_id") or basename(run_uri))
    done = [r for r in results if r.metrics]
    out = open_storage(parent(run_uri))
    analysis = record = previous = None
    changes = []
    if done:
        analysis = analyse(run, results, done[0].metrics["config"]["threshold"])
        draw_figures(run, analysis)
        record = history.run_record(run_id, utc_now(), len(done) == len(results), analysis, done[0].metrics)
        previous = history.previous_run(out, record)
        changes = history.compare_runs(out, previous["run_id"], analysis) if previous else []
    markdown = render(analysis, run_id, results, previous, changes)
    run.put(REPORT, markdown.encode())
    if record:
        run.put(history.RUN_RECORD, json.dumps(record, indent=2).encode())
    index = history.render_index(history.run_records(out))
    out.put(history.INDEX, index.encode())
    return WrittenReport(run.describe(REPORT), markdown, results, analysis, changes, index)


def draw_figures(run: Storage, analysis: Analysis) -> None:
    baseline = analysis.baseline_cells
    series = {split: {m: [_mean_low_high(c.seed_intervals[split][m]) for c in baseline]
                      for m in COMPARED + ("accuracy",)} for split in ("val", "test")}
    with tempfile.TemporaryDirectory(prefix="ratio-cnn-report-") as tmp:
        paths = {k: Path(tmp) / name for k, name in FIGURES.items()}
        plots.metrics_by_ratio(series, [c.ratio for c in baseline], paths["metrics"])
        plots.curve_bands({c.label: c.roc for c in baseline}, "roc", paths["roc"])
        plots.curve_bands({c.label: c.pr for c in baseline}, "pr", paths["pr"], baseline=baseline[0].malignant_share)
        for key, path in paths.items():
            run.put(FIGURES[key], path.read_bytes())


def _mean_low_high(i: Interval | None) -> tuple:
    return (float("nan"), None, None) if i is None else (i.mean, i.low, i.high)


def artifact_rows(written: "WrittenReport") -> list[dict]:
    """One row per ratio and variant (the Prefect table artifact): test means with their intervals."""
    rows = []
    for r in written.results:
        if not r.metrics:
            rows.append({"ratio": f"1:{ratio_name(r.ratio)}", "variant": "", "status": "failed",
                         "reason": r.failure})
            continue
        for v in r.variants:
            cell = written.analysis.cells[(r.ratio, v.name)]
            rows.append({"ratio": cell.label, "variant": v.name, "status": "ok", "seeds": len(cell.test.seeds),
                         **{f"test {NAMES[m]}": fmt(cell.seed_intervals["test"][m]) for m in COMPARED}})
    return rows


# -----------------------------------------------------------------------------
# text


def fmt(i: Interval | None, digits: int = 3, percent: bool = False) -> str:
    """`0.720 [0.700, 0.740]`; just the mean when there is no interval (one seed)."""
    if i is None:
        return "n/a"
    scale, unit = (100, "%") if percent else (1, "")
    mean = f"{scale * i.mean:.{digits}f}{unit}"
    return mean if i.low is None else f"{mean} [{scale * i.low:.{digits}f}, {scale * i.high:.{digits}f}]"


def signed(i: Interval) -> str:
    return f"{i.mean:+.3f}" + ("" if i.low is None else f" [{i.low:+.3f}, {i.high:+.3f}]")


def split_line(name: str, m: dict) -> str:
    """The study's own line: `Val Loss: … | Acc: …% | Precision: … | Recall: … | F1: …`."""
    return (f"{name} Loss: {m['loss']:.4f} | Acc: {100 * m['accuracy']:.2f}% | Precision: {m['precision']:.4f} | "
            f"Recall: {m['recall']:.4f} | F1: {m['f1']:.4f}")


def interval_line(seeds: int, intervals: dict) -> str:
    cells = [f"{label} [{fmt_bound(intervals[m], scale)}]" for label, m, scale in
             (("Loss", "loss", 1), ("Acc", "accuracy", 100), ("Precision", "precision", 1), ("Recall", "recall", 1),
              ("F1", "f1", 1))]
    return f"95% interval over {seeds} seeds: " + " | ".join(cells)


def fmt_bound(i: Interval | None, scale: float) -> str:
    if i is None or i.low is None:
        return "n/a"
    return f"{scale * i.low:.4f}, {scale * i.high:.4f}" if scale == 1 else f"{scale * i.low:.2f}%, {scale * i.high:.2f}%"


def render(analysis: Analysis | None, run_id: str, results: list[RatioResult], previous: dict | None = None,
           changes: list[history.Change] = ()) -> str:
    """report.md: `analysis` is None when no ratio finished; `previous` is the compared run's record."""
    done = [r for r in results if r.metrics]
    lines = [f"# Malignant:benign training ratio study — run `{run_id}`", ""]
    regressions = [c for c in changes if c.regression]
    if regressions:
        lines += [f"> **⚠ Regression against run `{previous['run_id']}`**: " + "; ".join(
            f"{c.cell} {NAMES[c.metric]} {c.previous:.3f} → {c.current:.3f} ({signed(c.difference)})"
            for c in regressions) + ". The drop's interval lies below zero (paired on test images and seeds).", ""]
    if analysis:
        lines += describe_run(done, analysis)
    lines += [f"{len(done)} of {len(results)} ratios finished."
              + ("" if len(done) == len(results) else " Failed or unfinished: " + ", ".join(
                  f"1:{ratio_name(r.ratio)}" for r in results if not r.metrics) + " (reasons below)."), ""]
    if analysis:
        lines += findings(analysis)
        lines += history_section(previous, changes)
        lines += baseline_section(analysis)
        lines += operating_points(analysis)
        if len(analysis.variant_names) > 1:
            lines += variants_section(analysis)
    for r in results:
        lines += ratio_section(r, analysis)
    return "\n".join(lines) + "\n"


def describe_run(done: list[RatioResult], analysis: Analysis) -> list[str]:
    first = done[0].metrics
    cfg, env, counts = first["config"], first["environment"], first["data"]["counts"]
    seeds = cfg["seeds"]
    design = ("paired: every seed of every ratio trains on the same sample of images, and seed s starts from the "
              "same weights at every ratio" if cfg.get("sample", "fixed") == "fixed" else
              "per-seed samples: each seed redraws the training sample (val and test stay fixed), so differences "
              "between ratios also carry sampling noise")
    return [
        f"Data: `{first['data']['uri']}` (manifest {first['data']['manifest_digest'][:19]}…). "
        f"Models: {', '.join(analysis.variant_names)} (strategy/model); {cfg['epochs']} epochs, batch "
        f"{cfg['batch_size']}, Adam lr {cfg['lr']:g}; {len(seeds)} seeds ({', '.join(map(str, seeds))}); "
        f"threshold {cfg['threshold']:g}; {env['device']} ({env.get('precision', 'fp32')}), torch {env['torch']}.",
        "",
        f"Evaluation: val {counts['val']['malignant']} malignant + {counts['val']['benign']} benign, test "
        f"{counts['test']['malignant']} + {counts['test']['benign']}, the same for every ratio and seed. "
        f"Design: {design}.",
        "",
        "Intervals are 95%: `mean [low, high]` over seeds is a t interval (the training's own noise); the "
        f"bootstrap intervals resample the test images ({RESAMPLES} stratified resamples: the evaluation set's "
        "noise); differences between two models are paired on test images and seeds and resampled over both.",
        "",
    ]


def findings(a: Analysis) -> list[str]:
    lines = ["## Findings", ""]
    if not a.ratio_comparisons:
        return lines + ["Fewer than two ratios finished: nothing to compare.", ""]
    extremes = a.ratio_comparisons[0]
    lines.append(f"In plain words (baseline {a.baseline}; A − B, so a positive number favours the first ratio):")
    lines.append("")
    for c in a.ratio_comparisons:
        real = [m for m in COMPARED if c.real(m)]
        noise = [NAMES[m] for m in COMPARED if not c.real(m)]
        said = []
        if real:
            said.append("real differences in " + ", ".join(f"{NAMES[m]} ({signed(c.differences[m])})" for m in real))
        if noise:
            said.append("within noise for " + ", ".join(noise))
        lines.append(f"- **{c.a} vs {c.b}**: " + "; ".join(said) + ".")
    lines += [""]
    ranking = a.ranking_differs
    lines.append("- **Ranking quality** (ROC-AUC, AP; no threshold): " + (
        f"{len(ranking)} of {len(a.ratio_comparisons)} comparisons show a real difference." if ranking
        else "no comparison shows a real difference: the ratios rank images equally well within the noise."))
    ends = [a.cells[(r, a.baseline)] for r in (max(a.ratios), min(a.ratios))]
    for effect in a.correction_effects:
        metric, before, after, removed = effect.metric, effect.at_threshold, effect.corrected, effect.removed
        values = ", ".join(f"{c.label} {c.operating_points['at_threshold'].test[metric].mean:.3f} → "
                           f"{c.operating_points['prior_shift'].test[metric].mean:.3f}" for c in ends)
        lines.append(
            f"- **Operating point** ({NAMES[metric]}, {extremes.a} vs {extremes.b}): {signed(before)} at the "
            f"threshold ({verdict(before)}), {signed(after)} after the prior-shift correction ({verdict(after)})"
            + (f": the correction removes {100 * removed:.0f}% of the ratio's effect" if removed >= 0 else
               ": the correction does not shrink it" if removed < 0 else "")
            + f" ({NAMES[metric]} at the threshold → corrected: {values}).")
    spread = a.widest_recall
    lines += [
        f"- **Noise**: with {spread.n} seeds the widest test-recall interval over seeds is {fmt(spread)}. "
        f"These are {a.tests} intervals at 95%: about {a.chance_exclusions:.1f} could exclude 0 by chance alone, "
        "so a lone borderline 'real' is weak evidence.",
        "",
        "| comparison | rule | " + " | ".join(NAMES[m] for m in COMPARED) + " |",
        "|---|---|" + "---|" * len(COMPARED),
    ]
    for c in a.ratio_comparisons + a.corrected_comparisons:
        rule = "0.5" if c.rule == "at_threshold" else "prior-shift"
        lines.append(f"| {c.a} − {c.b} | {rule} | "
                     + " | ".join(f"{signed(c.differences[m])} {_mark(c, m)}" for m in COMPARED) + " |")
    lines += ["", "✔ real (the interval excludes 0); · within noise. Threshold-free metrics do not depend on the rule.",
              ""]
    return lines


def history_section(previous: dict | None, changes: list[history.Change]) -> list[str]:
    lines = ["## Against the previous run", ""]
    if not previous:
        return lines + ["No earlier complete run on the same data and configuration under this output folder.", ""]
    lines += [f"Run `{previous['run_id']}` ({str(previous['finished'])[:19]}), same data and configuration. Current − "
              "previous, paired on test images and seeds; ⚠ marks a drop beyond the interval.", "",
              "| ratio and variant | metric | previous | current | difference |", "|---|---|---|---|---|"]
    for c in changes:
        lines.append(f"| {c.cell} | {NAMES[c.metric]} | {c.previous:.3f} | {c.current:.3f} | {signed(c.difference)}"
                     f"{' ⚠' if c.regression else ''} |")
    return lines + [""]


def _mark(c: Comparison, metric: str) -> str:
    return "✔" if c.real(metric) else "·"


def baseline_section(a: Analysis) -> list[str]:
    """The baseline variant at every ratio: intervals over seeds, then over test images, and the figures."""
    cells = a.baseline_cells
    lines = [f"## Summary ({a.baseline})", "", "Mean over seeds [95% t interval over seeds], test set:", "",
             "| ratio | train (malignant + benign) | val loss | val F1 | test loss | test acc | test precision | "
             "test recall | test F1 | test ROC-AUC | test AP |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        v, t = c.seed_intervals["val"], c.seed_intervals["test"]
        train = next(iter(c.variant.seeds.values()))["train"]
        lines.append(f"| {c.label} | {train['malignant']} + {train['benign']} | {fmt(v['loss'])} | {fmt(v['f1'])} | "
                     f"{fmt(t['loss'])} | {fmt(t['accuracy'], 2, True)} | {fmt(t['precision'])} | {fmt(t['recall'])} | "
                     f"{fmt(t['f1'])} | {fmt(t['roc_auc'])} | {fmt(t['average_precision'])} |")
    lines += ["", "The test set's own noise: mean over seeds [95% bootstrap interval over test images]:", "",
              "| ratio | test precision | test recall | test F1 | test ROC-AUC | test AP |", "|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c.label} | " + " | ".join(fmt(c.bootstrap[m]) for m in ("precision", "recall", "f1", "roc_auc",
                                                                                   "average_precision")) + " |")
    lines += ["", f"![Metrics by ratio]({FIGURES['metrics']})", "", "## Threshold-free view", "",
              f"![ROC curves]({FIGURES['roc']}) ![Precision-recall curves]({FIGURES['pr']})", ""]
    return lines


def operating_points(a: Analysis) -> list[str]:
    lines = ["## Operating points", "",
             "Thresholds chosen on val for each seed, applied to test; mean over seeds [95% t interval]. The "
             "prior-shift correction moves each logit by log(evaluation odds) − log(training odds) before 0.5, so a "
             "model trained at 1:1 is not judged at a threshold meant for 1:1 data.", "",
             "| ratio | rule | threshold | test precision | test recall | test F1 |", "|---|---|---|---|---|---|"]
    for r in a.ratios:
        cell = a.cells.get((r, a.baseline))
        if not cell:
            continue
        for point in cell.operating_points.values():
            lines.append(f"| {cell.label} | {point.rule} | {fmt(point.threshold)} | {fmt(point.test['precision'])} | "
                         f"{fmt(point.test['recall'])} | {fmt(point.test['f1'])} |")
    return lines + [""]


def variants_section(a: Analysis) -> list[str]:
    lines = ["## Strategies and models", "",
             f"Every strategy and model at every ratio, against {a.baseline} at the same ratio (paired on test images "
             "and seeds). Mean over seeds [95% t interval]; the rows group by strategy, then model.", ""]
    labels = [f"1:{ratio_name(r)}" for r in a.ratios]
    for metric in ("average_precision", "f1"):
        lines += [f"Test {NAMES[metric]}" + (" (threshold-free)" if metric == "average_precision" else " at the threshold")
                  + ":", "", "| strategy | model | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
        for name in sorted(a.variant_names, key=lambda n: (n.split("/")[0] != "none", n)):
            strategy, model = name.split("/")
            cells = [a.cells.get((r, name)) for r in a.ratios]
            lines.append(f"| {strategy} | {model} | "
                         + " | ".join(fmt(c.seed_intervals["test"][metric]) if c else "" for c in cells) + " |")
        lines.append("")
    lines += ["Differences against the baseline:", "",
              "| comparison | " + " | ".join(NAMES[m] for m in COMPARED) + " |", "|---|" + "---|" * len(COMPARED)]
    for c in a.variant_comparisons:
        lines.append(f"| {c.a} − {c.b.split(' ')[1]} | "
                     + " | ".join(f"{signed(c.differences[m])} {_mark(c, m)}" for m in COMPARED) + " |")
    better, worse = a.ranks_better, a.ranks_worse
    lines += ["", "In plain words: " + (
        "ranks better than the baseline (a real gain in ROC-AUC or AP): " + ", ".join(c.a for c in better) + ". "
        if better else "no variant ranks better than the baseline beyond the noise. ") + (
        "Ranks worse: " + ", ".join(c.a for c in worse) + "." if worse else "None ranks worse beyond the noise."), ""]
    return lines


def ratio_section(r: RatioResult, a: Analysis | None) -> list[str]:
    label = f"1:{ratio_name(r.ratio)}"
    if not r.metrics:
        return [f"## {label} ratio — failed", "", f"Reason: {r.failure}", ""]
    train = r.metrics["data"]["counts"]["train"]
    skipped = r.metrics["data"]["skipped_images"]
    lines = [f"## {label} ratio ({train['malignant']} malignant, {train['benign']} benign)", ""]
    if skipped:
        lines += [f"{len(skipped)} undecodable images skipped: {', '.join(skipped[:5])}", ""]
    for variant in r.variants:
        cell = a.cells[(r.ratio, variant.name)]
        seeds = cell.test.seeds
        if len(r.variants) > 1 or variant.name != BASELINE:
            lines += [f"### {variant.strategy}, {variant.model}", ""]
        for split, name in (("val", "Val"), ("test", "Test")):
            means = {m: i.mean for m, i in cell.seed_intervals[split].items() if i is not None}
            lines += [split_line(name, means), "", interval_line(len(seeds), cell.seed_intervals[split]), ""]
        folder = f"{r.folder}/{variant.name}"
        lines += [f"![{label} confusion matrices, seed {seeds[0]}]({folder}/confusion_matrix.png)", "",
                  f"![{label} training curves, seed {seeds[0]}]({folder}/curves.png)", "",
                  f"![{label} training curves, every seed]({folder}/curves_by_seed.png)", ""]
    return lines

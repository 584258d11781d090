"""The study's markdown report, built only from what the jobs of one run wrote.

`write_report` reads the run folder (results.py), has every number computed by
analysis.py (through stats.py), draws the figures (plots.py), and writes `report.md`
beside them. `render` turns an analysis into that markdown: words and tables around
numbers it is given, no statistics and no I/O.
"""
import json
import logging
import re
import tempfile
from dataclasses import astuple, dataclass
from pathlib import Path

from ratio_cnn import history, plots
from ratio_cnn.analysis import (BASELINE, COMPARED, MAX_VALUES, MIN_IMAGES, RESAMPLES, Analysis, Calibration,
                                 ColumnCheck, Comparison, Estimate, Validity, analyse)
from ratio_cnn.config import ratio_name
from ratio_cnn.host import human_bytes, utc_now
from ratio_cnn.results import PRUNED, RatioResult, collect
from ratio_cnn.stats import Interval, verdict
from ratio_cnn.storage import Storage, basename, open_storage, parent

log = logging.getLogger(__name__)

REPORT = "report.md"
FIGURES = {"metrics": "metrics_by_ratio.png", "roc": "roc.png", "pr": "pr.png"}
NAMES = {"loss": "loss", "accuracy": "accuracy", "precision": "precision", "recall": "recall", "f1": "F1",
         "roc_auc": "ROC-AUC", "average_precision": "AP", "specificity": "specificity", "brier": "Brier",
         "ece": "ECE"}
RULES = {"at_threshold": "at the threshold", "prior_shift": "prior-shift"}  # subgroup rates' operating points


@dataclass
class WrittenReport:
    uri: str  # of report.md
    markdown: str
    results: list[RatioResult]
    analysis: Analysis | None
    changes: list[history.Change]  # against the previous comparable run, if any
    index: str  # <out>/index.md
    previous_run: str | None = None  # the run id compared against

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
    if run.exists(PRUNED) and run.exists(REPORT):  # its predictions may be gone: the report it has stays
        log.info("%s was pruned (%s): keeping the report.md it has, rebuilding the index", run.uri, PRUNED)
        return WrittenReport(run.describe(REPORT), run.get(REPORT).decode(), results, None, [], write_index(out))
    analysis = record = previous = None
    changes = []
    if done:
        analysis = analyse(run, results, done[0].metrics["config"]["threshold"])
        draw_figures(run, analysis)
        record = history.run_record(run_id, utc_now(), len(done) == len(results), analysis, done[0].metrics)
        previous = history.previous_run(out, record)
        changes = history.compare_runs(out, previous["run_id"], analysis) if previous else []
        record["regressions"] = [f"{c.cell} {c.metric}" for c in changes if c.regression]
    markdown = render(analysis, run_id, results, previous, changes)
    run.put(REPORT, markdown.encode())
    if record:
        run.put(history.RUN_RECORD, json.dumps(record, indent=2).encode())
    return WrittenReport(run.describe(REPORT), markdown, results, analysis, changes, write_index(out),
                         previous and previous["run_id"])


def write_index(out: Storage) -> str:
    """`<out>/index.md` and its figure of the headline metrics across runs (trends.png), from every run record."""
    records = history.run_records(out)
    trends = history.trend_series(records)
    if trends.points:
        with tempfile.TemporaryDirectory(prefix="ratio-cnn-index-") as tmp:
            path = Path(tmp) / history.TRENDS
            plots.trends(trends, path)
            out.put(history.TRENDS, path.read_bytes())
    index = history.render_index(records, with_trends=bool(trends.points))
    out.put(history.INDEX, index.encode())
    return index


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
        for evaluated in [analysis] + analysis.extra_sets:
            if evaluated.calibration:
                path = Path(tmp) / reliability_figure(evaluated)
                panels = {title: {c.label: astuple(c.reliability[key]) for c in evaluated.calibration.cells}
                          for key, title in (("raw", "as trained"), ("corrected", "after the prior-shift correction"))}
                plots.reliability_diagrams(panels, f"Reliability, {set_word(evaluated)} ({analysis.baseline})", path)
                run.put(path.name, path.read_bytes())


def reliability_figure(a: Analysis) -> str:
    """reliability.png for test, reliability-<name>.png for an extra set (its name made safe for a file)."""
    if a.evaluation_set is None:
        return "reliability.png"
    return "reliability-" + re.sub(r"[^A-Za-z0-9._-]", "_", a.evaluation_set.name) + ".png"


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
            rows.append({"ratio": cell.label, "variant": v.name, "status": "ok", "seeds": len(cell.evaluated.seeds),
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


def bracket(i: Interval | None) -> str:
    """Just the interval, `[0.700, 0.740]`, beside a mean given once already."""
    return "[n/a]" if i is None or i.low is None else f"[{i.low:.3f}, {i.high:.3f}]"


def estimate(e: Estimate) -> str:
    """`0.720 [0.700, 0.740] [0.690, 0.750]`: the mean over seeds, its interval over seeds, then over images."""
    return f"{e.seeds.mean:.3f} {bracket(e.seeds)} {bracket(e.images)}"


def too_few(*counts: int) -> str:
    """Why a subgroup cell has no number: a class it needs is missing, or has too few images for an interval."""
    return "one class only" if 0 in counts else "too few for an interval"


def value_name(value: str) -> str:
    return "(missing)" if value == "" else f"`{value}`"


def set_word(a: Analysis) -> str:
    """How the report names the evaluated set: test, or an extra set's name."""
    return "test" if a.evaluation_set is None else f"`{a.evaluation_set.name}`"


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
        if analysis.validity:
            lines += split_statement(analysis.validity)
    lines += [f"{len(done)} of {len(results)} ratios finished."
              + ("" if len(done) == len(results) else " Failed or unfinished: " + ", ".join(
                  f"1:{ratio_name(r.ratio)}" for r in results if not r.metrics) + " (reasons below)."), ""]
    if analysis:
        lines += findings(analysis)
        lines += history_section(previous, changes)
        lines += baseline_section(analysis)
        lines += operating_points(analysis)
        if analysis.validity:
            lines += shortcut_section(analysis.validity) + subgroups_section(analysis, analysis.validity)
        if analysis.calibration:
            lines += ["## Calibration", ""] + calibration_section(analysis)
        for extra in analysis.extra_sets:
            lines += extra_set_section(extra, analysis.validity)
        if len(analysis.variant_names) > 1:
            lines += variants_section(analysis)
        lines += costs_section(analysis.costs)
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
    """Warnings first (shortcuts, leakage, overlapping extra sets), then the ratios compared, then validity."""
    return ["## Findings", ""] + warnings(a) + comparisons_text(a) + validity_findings(a)


def comparisons_text(a: Analysis) -> list[str]:
    """The ratios against each other on one evaluated set, in plain words and as a table."""
    lines = []
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
        values = ", ".join(f"{c.label} {c.operating_points['at_threshold'].evaluated[metric].mean:.3f} → "
                           f"{c.operating_points['prior_shift'].evaluated[metric].mean:.3f}" for c in ends)
        lines.append(
            f"- **Operating point** ({NAMES[metric]}, {extremes.a} vs {extremes.b}): {signed(before)} at the "
            f"threshold ({verdict(before)}), {signed(after)} after the prior-shift correction ({verdict(after)})"
            + (f": the correction removes {100 * removed:.0f}% of the ratio's effect" if removed >= 0 else
               ": the correction does not shrink it" if removed < 0 else "")
            + f" ({NAMES[metric]} at the threshold → corrected: {values}).")
    spread = a.widest_recall
    lines += [
        f"- **Noise**: with {spread.n} seeds the widest {set_word(a)}-recall interval over seeds is {fmt(spread)}. "
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


def costs_section(costs: dict) -> list[str]:
    """What each job took, and the run (analysis.run_costs); nothing for jobs that did not record it."""
    if not costs:
        return []
    lines = ["## Costs", "", "Seconds: wall, loading the data, and on the device training and evaluating (every seed "
             "behind the results). Reads: from the datasets (what the worker's cache held is not read again); "
             "writes: to the results, before metrics.json. The run's wall time is its longest job's; the rest "
             "add up (docs/operations.md).", "",
             "| job | device | wall | data | device (train + eval) | images decoded | objects read | read | written |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, c in costs.items():
        lines.append(f"| {'**run**' if label == 'run' else label} | {c.get('device', '?')} | {c['wall_seconds']:.0f} s | "
                     f"{c['data_seconds']:.0f} s | {c['device_seconds']:.0f} s ({c['train_seconds']:.0f} + "
                     f"{c['eval_seconds']:.0f}) | {c['images_decoded']:,} | {c['objects_read']:,} | "
                     f"{human_bytes(c['bytes_read'])} | {human_bytes(c['bytes_written'])} |")
    return lines + [""]


def _mark(c: Comparison, metric: str) -> str:
    return "✔" if c.real(metric) else "·"


def baseline_section(a: Analysis) -> list[str]:
    """The baseline variant at every ratio: intervals over seeds, then over test images, and the figures."""
    lines = [f"## Summary ({a.baseline})", ""] + summary_tables(a)
    lines += ["", f"![Metrics by ratio]({FIGURES['metrics']})", "", "## Threshold-free view", "",
              f"![ROC curves]({FIGURES['roc']}) ![Precision-recall curves]({FIGURES['pr']})", ""]
    return lines


def summary_tables(a: Analysis) -> list[str]:
    """Intervals over seeds, then over the evaluated set's images, for the baseline at every ratio."""
    cells, word = a.baseline_cells, set_word(a)
    lines = [f"Mean over seeds [95% t interval over seeds], {word} set:", "",
             f"| ratio | train (malignant + benign) | val loss | val F1 | {word} loss | {word} acc | {word} precision | "
             f"{word} recall | {word} F1 | {word} ROC-AUC | {word} AP |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        v, t = c.seed_intervals["val"], c.seed_intervals[c.split]
        train = next(iter(c.variant.seeds.values()))["train"]
        lines.append(f"| {c.label} | {train['malignant']} + {train['benign']} | {fmt(v['loss'])} | {fmt(v['f1'])} | "
                     f"{fmt(t['loss'])} | {fmt(t['accuracy'], 2, True)} | {fmt(t['precision'])} | {fmt(t['recall'])} | "
                     f"{fmt(t['f1'])} | {fmt(t['roc_auc'])} | {fmt(t['average_precision'])} |")
    lines += ["", f"The {word} set's own noise: mean over seeds [95% bootstrap interval over {word} images]:", "",
              f"| ratio | {word} precision | {word} recall | {word} F1 | {word} ROC-AUC | {word} AP |",
              "|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c.label} | " + " | ".join(fmt(c.bootstrap[m]) for m in ("precision", "recall", "f1", "roc_auc",
                                                                                   "average_precision")) + " |")
    return lines


def operating_points(a: Analysis, heading: str = "## Operating points") -> list[str]:
    word = set_word(a)
    lines = [heading, "",
             f"Thresholds chosen on val for each seed, applied to {word}; mean over seeds [95% t interval]. The "
             "prior-shift correction moves each logit by log(evaluation odds) − log(training odds) before 0.5, so a "
             "model trained at 1:1 is not judged at a threshold meant for 1:1 data.", "",
             f"| ratio | rule | threshold | {word} precision | {word} recall | {word} F1 |", "|---|---|---|---|---|---|"]
    for r in a.ratios:
        cell = a.cells.get((r, a.baseline))
        if not cell:
            continue
        for point in cell.operating_points.values():
            lines.append(f"| {cell.label} | {point.rule} | {fmt(point.threshold)} | {fmt(point.evaluated['precision'])} | "
                         f"{fmt(point.evaluated['recall'])} | {fmt(point.evaluated['f1'])} |")
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
        seeds = cell.evaluated.seeds
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


# -----------------------------------------------------------------------------
# validity: whether the answer is real (jobs written since the validity checks)


def warnings(a: Analysis) -> list[str]:
    """What opens the Findings: shortcuts, test images seen in training, extra sets that overlap training."""
    lines = []
    v = a.validity
    if v:
        for column in dict.fromkeys(k.column for k in v.shortcuts):
            lines += [shortcut_warning(column, [k for k in v.shortcuts if k.column == column]), ""]
        split = v.split
        if split and split.twins_column and not split.grouped and any(split.test_twins.values()):
            lines += [f"> **⚠ Near-duplicates in training**: some test images show a lesion the model was trained on "
                      f"(`{split.twins_column}`; test images with a near-duplicate in the training sample: "
                      + ", ".join(f"{label} {n}" for label, n in split.test_twins.items())
                      + f"). The split was not grouped by `{split.twins_column}`, so these test images are partly "
                      f"remembered, not recognised; rerun with `--group-by {split.twins_column}`.", ""]
    for extra in a.extra_sets:
        described = extra.evaluation_set
        if any(described.overlap.values()):
            lines += [f"> **⚠ Evaluation set `{described.name}` overlaps training**: images also in the training data: "
                      + ", ".join(f"{label} {n}" for label, n in described.overlap.items())
                      + ". Its numbers are inflated by them." + "".join(f" {note}" for note in described.notes), ""]
    return lines


def shortcut_warning(column: str, flagged: list[ColumnCheck]) -> str:
    worse = [k for k in flagged if k.ranks_worse_within]
    alone = [k for k in flagged if k.column_ranks_as_well]
    said = []
    if worse:
        said.append(f"within each value of `{column}` the models rank clearly worse than over all test images ("
                    + "; ".join(f"{k.label}: ROC-AUC {k.within.mean:.3f} within against {k.overall.mean:.3f} overall, "
                                f"within − overall {signed(k.within_minus_overall)}" for k in worse) + ")")
    if alone:
        said.append(f"`{column}` alone, without looking at an image, ranks test images as well as the model ("
                    + "; ".join(f"{k.label}: column alone ROC-AUC {fmt(k.column_alone['roc_auc'])}, model − column "
                                f"{signed(k.model_minus_column['roc_auc'])}" for k in alone) + ")")
    return (f"> **⚠ Shortcut (`{column}`)**: " + "; and ".join(said) + f". Part of what the model ranks by may be which "
            f"`{column}` an image has, not its lesion: read the ratios' comparisons below with that in mind "
            "(Shortcut check, Subgroups).")


def validity_findings(a: Analysis) -> list[str]:
    """Per ratio: better than chance, better than the best column alone; each extra set; calibration."""
    lines = []
    if a.validity:
        for v in a.validity.verdicts:
            chance = (f"ranks test images better than chance (ROC-AUC {fmt(v.roc_auc)})" if v.above_chance else
                      f"does not rank test images better than chance beyond the noise (ROC-AUC {fmt(v.roc_auc)})")
            if v.best_column is None:
                column = ("no column alone to compare it with (the jobs wrote no training counts for "
                          + ", ".join(f"`{c}`" for c in a.validity.columns) + ")" if a.validity.columns
                          else "no metadata column to compare it with")
            else:
                column = (f"{'better' if v.beats_best_column else 'not better'} than the best column alone, "
                          f"`{v.best_column}` (ROC-AUC {fmt(v.column_alone)}; model − column "
                          f"{signed(v.model_minus_column)})")
            lines.append(f"- **{v.label}** {chance}; {column}.")
    for extra in a.extra_sets:
        cells = extra.baseline_cells
        above = [c.label for c in cells if c.ranks_above_chance]
        lines.append(f"- **On `{extra.evaluation_set.name}`** (ROC-AUC over its images): "
                     + ", ".join(f"{c.label} {fmt(c.bootstrap['roc_auc'])}" for c in cells) + "; "
                     + ("above chance at " + ", ".join(above) if above else "none above chance beyond the noise")
                     + ".")
    if a.calibration:
        lines.append(calibration_finding(a.calibration))
    return lines + ([""] if lines else [])


def calibration_finding(c: Calibration) -> str:
    """How the ratio moves ECE on test, before and after the prior-shift correction, and where the correction helps."""
    ends = [c.cells[-1], c.cells[0]]
    line = "- **Calibration** (test, ECE, lower is better): "
    if c.raw_difference:
        high, low = ends
        line += (f"{low.label} {low.raw['ece'].seeds.mean:.3f} → {high.label} {high.raw['ece'].seeds.mean:.3f} as "
                 f"trained ({high.label} − {low.label} {signed(c.raw_difference['ece'])}, "
                 f"{verdict(c.raw_difference['ece'])}); after the prior-shift correction "
                 f"{low.corrected['ece'].seeds.mean:.3f} → {high.corrected['ece'].seeds.mean:.3f} "
                 f"({signed(c.corrected_difference['ece'])}, {verdict(c.corrected_difference['ece'])}). ")
    else:
        line += f"{ends[0].label} {ends[0].raw['ece'].seeds.mean:.3f} as trained. "
    line += ("The correction lowers ECE beyond the noise at " + ", ".join(c.improved) if c.improved else
             "The correction lowers ECE beyond the noise at no ratio")
    return line + (f", and raises it at {', '.join(c.worsened)}." if c.worsened else ".")


def split_statement(v: Validity) -> list[str]:
    s = v.split
    if s is None:
        return []
    how = ("a stable hash of each image's identity (not the manifest's row order, so a growing dataset keeps its "
           "test set)" if s.rule == "stable-hash" else f"the rule `{s.rule}`")
    grouped = (f"grouped by `{s.group_by}`: no value of it straddles train, val and test" if s.group_by else
               "not grouped: images of one lesion or patient can fall on both sides")
    lines = [f"Split: val, test and train by {how}; {grouped}."
             + (f" Held out: every image with `{s.holdout}`, never trained on nor used for val or test, evaluated as "
                "a set of its own below." if s.holdout else "")]
    if s.twins_column:
        counts = ("test " + ", ".join(f"{label} {n}" for label, n in s.test_twins.items()) + "; val "
                  + ", ".join(f"{label} {n}" for label, n in s.val_twins.items()))
        lines.append(f"Near-duplicates (`{s.twins_column}`), images with a near-duplicate in the training sample: "
                     f"{counts}." + (f" The split kept each `{s.twins_column}` group on one side, which removed them."
                                     if s.grouped else ""))
    else:
        lines.append("Near-duplicates: the data had no near-duplicate groups (`ratio-cnn data dedupe` finds them), so "
                     "whether test images show lesions seen in training was not checked.")
    return [" ".join(lines), ""]


def shortcut_section(v: Validity) -> list[str]:
    lines = ["## Shortcut check", ""]
    if not v.columns:
        return lines + no_columns(v)
    lines += ["Could a column that needs no image (where an image came from, its diagnosis) explain the ranking? "
              "Baseline, test. *Column alone*: each test image scored by its value's malignant share in that ratio's "
              "training sample. *Within*: the model's ROC-AUC over the malignant–benign pairs that share a value, "
              "against *overall*, over all pairs. Mean [95% interval over test images]; differences are paired on "
              "images and seeds. ⚠ marks a shortcut: within − overall below 0, or the model not beyond the column.", "",
              "| column | ratio | column alone ROC-AUC | column alone AP | model − column (ROC-AUC) | model overall | "
              "model within | within − overall | |", "|---|---|---|---|---|---|---|---|---|"]
    for k in v.checks:
        alone = ([fmt(k.column_alone[m]) for m in ("roc_auc", "average_precision")]
                 + [signed(k.model_minus_column["roc_auc"])] if k.column_alone else
                 ["restates the label (each value one class)"] * 3 if k.determines_label else ["no training counts"] * 3)
        within = ([fmt(k.within), signed(k.within_minus_overall)] if k.within else ["no value holds both classes"] * 2)
        lines.append(f"| `{k.column}` | {k.label} | " + " | ".join(alone + [fmt(k.overall)] + within)
                     + f" | {'⚠' if k.shortcut else ''} |")
    return lines + [""]


def no_columns(v: Validity) -> list[str]:
    if v.missing:
        return [f"The configuration's subgroups {', '.join(f'`{c}`' for c in v.missing)} are not columns of "
                f"predictions.csv (it has: {', '.join(v.metadata) or 'none'}): not grouped by.", ""]
    if not v.metadata:
        return ["The data had no metadata columns (such as `source` or `diagnosis`): no subgroups and no shortcut "
                "check. `ratio-cnn data ingest` keeps them from a manifest that has them.", ""]
    return [f"No metadata column has 2–{MAX_VALUES} values in the test split ({', '.join(v.metadata)}): name the "
            "columns to group by with `--subgroups`.", ""]


def subgroups_section(a: Analysis, v: Validity) -> list[str]:
    if not v.columns:
        return []
    how = ("the configuration's subgroups" if v.asked else
           f"every metadata column with 2–{MAX_VALUES} values in the test split")
    lines = ["## Subgroups", "",
             f"Test images by {', '.join(f'`{c}`' for c in v.columns)} ({how}); baseline "
             f"{a.baseline}. Each cell: mean over seeds [95% t interval over seeds] [95% bootstrap interval over the "
             f"value's images]. ROC-AUC and AP need {MIN_IMAGES} malignant and {MIN_IMAGES} benign images of the value, "
             f"recall {MIN_IMAGES} malignant, specificity {MIN_IMAGES} benign; smaller values show their counts only.",
             ""]
    if v.missing:
        lines += no_columns(v)
    for column in v.columns:
        lines += [f"### `{column}`", "",
                  "| ratio | value | malignant + benign | ROC-AUC | AP | " + " | ".join(
                      f"{kind} ({RULES[rule]})" for kind in ("recall", "specificity") for rule in RULES) + " |",
                  "|---|---|---|---|---|" + "---|" * 2 * len(RULES)]
        for k in v.checks:
            if k.column != column:
                continue
            for value in k.values:
                cells = [estimate(value.ranking[m]) if value.ranking else too_few(value.malignant, value.benign)
                         for m in ("roc_auc", "average_precision")]
                for rates, n in ((value.recall, value.malignant), (value.specificity, value.benign)):
                    cells += [estimate(rates[rule]) if rates else "no images" if n == 0 else too_few(n)
                              for rule in RULES]
                lines.append(f"| {k.label} | {value_name(value.value)} | {value.malignant} + {value.benign} | "
                             + " | ".join(cells) + " |")
        compared = [c for c in v.comparisons if c.column == column]
        if compared:
            metrics = ("roc_auc", "average_precision", "recall", "specificity")
            lines += ["", f"Ratios within each value of `{column}` (A − B, paired on the value's images and the seeds; "
                      "recall and specificity at the threshold). ✔ real, · within noise:", "",
                      "| comparison | value | " + " | ".join(NAMES[m] for m in metrics) + " |",
                      "|---|---|" + "---|" * len(metrics)]
            for c in compared:
                needs = {"roc_auc": (c.malignant, c.benign), "average_precision": (c.malignant, c.benign),
                         "recall": (c.malignant,), "specificity": (c.benign,)}
                lines.append(f"| {c.a} − {c.b} | {value_name(c.value)} | " + " | ".join(
                    f"{signed(c.differences[m])} {'✔' if c.real(m) else '·'}" if m in c.differences
                    else too_few(*needs[m]) for m in metrics) + " |")
        lines.append("")
    return lines


def calibration_section(a: Analysis) -> list[str]:
    """Brier score and ECE of the baseline on one evaluated set, as trained and corrected, and the figure."""
    c, word = a.calibration, set_word(a)
    lines = [f"How far the predicted probabilities are from the observed malignant shares ({a.baseline}, {word}): "
             "Brier score and expected calibration error (ECE, 10 equal-width probability bins), lower is better; "
             f"mean over seeds [95% t interval over seeds] [95% bootstrap interval over {word} images]. *Corrected*: "
             "each seed's logits moved by log(evaluation odds) − log(its training odds), as the prior-shift operating "
             "point does.", "",
             "| ratio | probabilities | Brier | ECE | corrected − as trained: Brier | ECE |", "|---|---|---|---|---|---|"]
    for cell in c.cells:
        change = [f"{signed(cell.correction[m])} {'✔' if verdict(cell.correction[m]) == 'real' else '·'}"
                  for m in ("brier", "ece")]
        lines.append(f"| {cell.label} | as trained | {estimate(cell.raw['brier'])} | {estimate(cell.raw['ece'])} | "
                     f"{change[0]} | {change[1]} |")
        lines.append(f"| {cell.label} | corrected | {estimate(cell.corrected['brier'])} | "
                     f"{estimate(cell.corrected['ece'])} | | |")
    if c.raw_difference:
        high, low = c.cells[-1].label, c.cells[0].label
        lines += ["", f"{high} − {low}, paired on {word} images and seeds: as trained Brier "
                  f"{signed(c.raw_difference['brier'])}, ECE {signed(c.raw_difference['ece'])}; corrected Brier "
                  f"{signed(c.corrected_difference['brier'])}, ECE {signed(c.corrected_difference['ece'])}."]
    return lines + ["", f"![Reliability diagrams, {word}]({reliability_figure(a)})", ""]


def extra_set_section(a: Analysis, v: Validity | None) -> list[str]:
    """An extra evaluation set: the same tables as test, by the same code."""
    described, word = a.evaluation_set, set_word(a)
    lines = [f"## Evaluation set {word}", "",
             f"`{described.uri}`: {described.counts['malignant']} malignant + {described.counts['benign']} benign "
             f"images, on which every seed of the baseline ({a.baseline}) at every ratio was evaluated. Thresholds are "
             "those chosen on the job's own val set, never on this set; the prior-shift correction aims at this set's "
             "own malignant:benign counts (a known prior, not its predictions)."]
    if v and v.split and v.split.holdout and described.name.startswith("holdout-"):
        lines[-1] += (f" Held out of the training data: every image with `{v.split.holdout}`, never trained on nor "
                      "used for val or test.")
    lines.append("")
    if any(described.overlap.values()):
        lines += ["> ⚠ Images also in the training data: " + ", ".join(
            f"{label} {n}" for label, n in described.overlap.items()) + ". Its numbers are inflated by them."
            + "".join(f" {note}" for note in described.notes), ""]
    lines += [f"### Ratios compared on {word}", ""] + comparisons_text(a)
    lines += [f"### Summary on {word}", ""] + summary_tables(a) + [""]
    lines += operating_points(a, f"### Operating points on {word}")
    if a.calibration:
        lines += [f"### Calibration on {word}", ""] + calibration_section(a)
    return lines

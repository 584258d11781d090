"""Prefect flows: `train-ratio` runs one job, `ratio-study` fans ratios out and reports.

`ratio-study` launches one `train-ratio` per ratio, concurrently, in one of two ways:
- in-process (the embedded default): subflows in this process, on Prefect's ephemeral
  API when no server is configured; no worker, no Docker;
- deployments: `run_deployment` of `train-ratio/gpu` per ratio, so each ratio runs in
  its own container on a GPU work pool.
One failed ratio stops neither the others nor the report; the run then ends Failed. If the
Prefect API goes away mid-study (the temporary server `make study` starts, under load), the
command builds the report from what the jobs wrote, which needs no Prefect, and exits non-zero.
Each flow takes its configuration (ratio_cnn/config.py) as its one parameter, which the
Prefect UI shows as a form. This module imports no torch of its own: the library does.

    python -m flows.study        # the whole study on the embedded defaults (make study)
"""
import atexit
import base64
import dataclasses
import json
import logging
import os
import sys
from contextlib import contextmanager

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.events import emit_event
from prefect.runtime import flow_run as prefect_flow_run
from prefect.runtime import task_run as prefect_task_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from ratio_cnn import history, report
from ratio_cnn.cli import study_config
from ratio_cnn.config import StudyConfig, TrainConfig, new_run_id, ratio_name
from ratio_cnn.data import MANIFEST
from ratio_cnn.errors import RatioCnnError, StorageUnavailable
from ratio_cnn.host import utc_now
from ratio_cnn.job import run_job
from ratio_cnn.job_folder import FolderBusy
from ratio_cnn.results import LATEST, RUN_FILE
from ratio_cnn.storage import join, open_storage
from ratio_cnn.synth import make_synthetic_dataset


def is_transient(task, task_run, state) -> bool:
    """Retry storage outages and a folder another attempt still holds (it may finish or be
    found dead); bad data or a bug fails the same way every time."""
    try:
        state.result()
    except (StorageUnavailable, FolderBusy):
        return True
    except BaseException:
        return False
    return False


@task(retries=3, retry_delay_seconds=[10, 60, 300], retry_condition_fn=is_transient, cache_policy=NO_CACHE)
def train_job(cfg: TrainConfig) -> dict:
    """A retry resumes: it keeps the seeds and checkpoints the failed attempt left."""
    if prefect_task_run.get_run_count() > 1:
        cfg = dataclasses.replace(cfg, resume=True)
    metrics = run_job(cfg, flow_run=prefect_flow_run.get_id())
    return {"ratio": cfg.ratio, "test": {f"{v['strategy']}/{v['model']}": v["summary"]["test"]["roc_auc"]
                                         for v in metrics["variants"]}}


@flow(name="train-ratio")
def train_ratio(job: TrainConfig) -> dict:
    """One ratio: the same job as `ratio-cnn train`."""
    # The job's progress lines (INFO) in the flow's logs; PREFECT_LOGGING_EXTRA_LOGGERS=ratio_cnn
    # (set by the Makefile and the deployments) also sends them to the Prefect UI.
    logging.getLogger("ratio_cnn").setLevel(logging.INFO)
    return train_job(job)


@task(cache_policy=NO_CACHE)
def launch_ratio(job: TrainConfig, launch: str, train_deployment: str) -> None:
    if launch == "in-process":
        train_ratio(job)
        return
    flow_run = run_deployment(name=train_deployment, parameters={"job": job.to_dict()}, timeout=None)
    if not flow_run.state.is_completed():
        raise RuntimeError(f"{train_deployment} run {flow_run.name} ended {flow_run.state.name}: {flow_run.state.message}")


@task(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=is_transient, cache_policy=NO_CACHE)
def record_run(study: StudyConfig, run_id: str) -> None:
    meta = {"run_id": run_id, "ratios": study.ratios, "data": study.data, "options": dataclasses.asdict(study.options),
            "launch": study.launch, "started": utc_now()}
    open_storage(join(study.out, run_id)).put(RUN_FILE, json.dumps(meta, indent=2).encode())


@task(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=is_transient, cache_policy=NO_CACHE)
def build_report(out: str, run_id: str) -> str:
    """report.md from what the jobs wrote, published as artifacts; `latest` moves when all finished."""
    written = report.write_report(join(out, run_id))
    create_markdown_artifact(key="ratio-study-report", markdown=written.markdown,
                             description=f"run {run_id}: {written.uri}")
    create_table_artifact(key="ratio-study-summary", table=report.artifact_rows(written),
                          description=f"run {run_id}")
    create_markdown_artifact(key="ratio-study-index", markdown=index_with_figure(out, written.index),
                             description=f"every run under {out}")
    if written.regressions:
        get_run_logger().warning("run %s: %d headline metrics dropped beyond their interval (top of the report)",
                                 run_id, len(written.regressions))
    emit_alerts(written, run_id, out)
    if all(r.metrics for r in written.results):
        latest = {"run_id": run_id, "report": written.uri, "finished": utc_now()}
        open_storage(out).put(LATEST, json.dumps(latest, indent=2).encode())
    return written.uri


def index_with_figure(out: str, index: str) -> str:
    """index.md with its trend figure inline (a data URI): an artifact cannot reach a file beside it."""
    link = f"]({history.TRENDS})"
    if link not in index:
        return index
    figure = base64.b64encode(open_storage(out).get(history.TRENDS)).decode()
    return index.replace(link, f"](data:image/png;base64,{figure})")


REGRESSION_EVENT = "ratio-cnn.regression"  # deploy/automations.yaml turns these into notifications
FAILURE_EVENT = "ratio-cnn.ratio.failed"


def emit_alerts(written: report.WrittenReport, run_id: str, out: str) -> None:
    """A Prefect event per run that flagged a regression (every dropped metric in its payload), and one per
    ratio that failed; emitted inside the flow run, so Prefect relates each to it and its deployment."""
    resource = {"prefect.resource.id": f"ratio-cnn.run.{run_id}", "prefect.resource.name": run_id}
    if written.regressions:
        emit_event(REGRESSION_EVENT, resource=resource, payload={
            "run_id": run_id, "out": out, "report": written.uri, "compared_with": written.previous_run,
            "regressions": [{"cell": c.cell, "metric": c.metric, "previous": c.previous, "current": c.current,
                             "change": c.difference.mean, "low": c.difference.low, "high": c.difference.high}
                            for c in written.regressions]})
    for r in written.results:
        if not r.metrics:
            emit_event(FAILURE_EVENT, resource=resource | {"prefect.resource.id": f"ratio-cnn.run.{run_id}.{r.folder}"},
                       payload={"run_id": run_id, "out": out, "ratio": r.ratio, "label": f"1:{ratio_name(r.ratio)}",
                                "reason": r.failure,
                                "report": written.uri})


def trains_on_cpu(device: str) -> bool:
    """The jobs' own device rule; "cuda" with no GPU is left to each job, which fails saying so."""
    from ratio_cnn.train import pick_device

    return device != "cuda" and pick_device(device).type == "cpu"


@contextmanager
def cpu_threads_per_job(jobs: int):
    """Jobs side by side on a CPU get a share of its cores each, not all of them each (4 jobs x 2
    threads on 2 cores). Four jobs on 2 cores, whole study (docs/benchmarks.md): one thread each
    125 s, two each 124 s, one job at a time 136 s in fp32; 104, 116 and 115 s in an earlier bf16
    run. torch's thread count is the process's: restored afterwards."""
    import torch

    before = torch.get_num_threads()
    if jobs > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@flow(name="ratio-study", task_runner=ThreadPoolTaskRunner(max_workers=8))
def ratio_study(study: StudyConfig = StudyConfig()):
    """Every ratio's job, concurrently, then the report; Failed if any ratio failed. The default
    is the form's; the flow reads `study` and never changes it."""
    logger = get_run_logger()
    run_id = study.run_id or new_run_id()
    jobs = study.job_configs(run_id)  # every job built and checked before any starts
    record_run(study, run_id)
    logger.info("run %s: ratios %s, %s, writing to %s", run_id, ", ".join(f"1:{ratio_name(r)}" for r in study.ratios),
                study.launch, join(study.out, run_id))
    side_by_side = len(jobs) if study.launch == "in-process" and trains_on_cpu(study.options.device) else 1
    with cpu_threads_per_job(side_by_side):
        launches = {job.ratio: launch_ratio.submit(job, study.launch, study.train_deployment) for job in jobs}
        for future in launches.values():
            future.wait()
    failed = [r for r, future in launches.items() if not future.state.is_completed()]
    for ratio in failed:
        logger.error("ratio 1:%s failed: %s", ratio_name(ratio), launches[ratio].state.message)
    report_uri = build_report(study.out, run_id)
    logger.info("report: %s", report_uri)
    if failed:
        names = ", ".join(f"1:{ratio_name(r)}" for r in failed)
        return Failed(message=f"ratios {names} failed; the report {report_uri} shows why")
    return report_uri


def api_lost(error: BaseException | None) -> bool:
    """Whether `error`, or an error that led to it, is the Prefect API not answering: refused, reset
    or timed-out connections, or a server error (5xx) from a server going down."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, httpx.TransportError) or (
                isinstance(error, httpx.HTTPStatusError) and error.response.status_code >= 500):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


class ApiLossInOneLine(logging.Filter):
    """Prefect logs each call that finds its API gone with a traceback; a line says as much."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and api_lost(record.exc_info[1]):
            record.exc_info = record.exc_text = None
        return True


def report_without_prefect(study: StudyConfig, lost: BaseException) -> str:
    """The line to end with once the API is gone: the report built from what the jobs wrote, or the
    command that builds it."""
    run_uri = join(study.out, study.run_id)
    why = f"the Prefect API went away mid-study ({type(lost).__name__}: {' '.join(str(lost).split())[:200]})"
    try:
        written = report.write_report(run_uri)
    except RatioCnnError as e:
        return (f"flows.study: error: {why}, and no report could be built from what the jobs wrote ({e}): "
                f"once they are done, run `ratio-cnn report --run {run_uri}`")
    unfinished = [f"1:{ratio_name(r.ratio)}" for r in written.results if not r.metrics]
    rest = f"; ratios {', '.join(unfinished)} did not finish: it says why" if unfinished else ""
    return f"flows.study: error: {why}; the report was built from what the jobs wrote: {written.uri}{rest}"


def main(argv: list[str] | None = None) -> None:
    """`make study`: the synthetic dataset if missing, then the study (in-process by default)."""
    from ratio_cnn.train import pick_device

    try:
        study = study_config(argv, on_gpu=pick_device("auto").type == "cuda")
        study = dataclasses.replace(study, run_id=study.run_id or new_run_id())
        study.job_configs(study.run_id)  # one line here, before Prefect starts, rather than a failed flow run
    except RatioCnnError as e:
        raise SystemExit(f"flows.study: error: {e}") from None
    if study.data == StudyConfig.data and not open_storage(study.data).exists(MANIFEST):
        print(f"making the synthetic dataset in {study.data} (about 30 s)", flush=True)
        make_synthetic_dataset(study.data)
    for handler in logging.getLogger().handlers:  # Prefect's console
        handler.addFilter(ApiLossInOneLine())
    try:
        state = ratio_study(study, return_state=True)
        uri = state.result() if state.is_completed() else None
    except Exception as e:
        if not api_lost(e):
            raise
        # Printed at exit, after Prefect's own shutdown has given up on the lost API (it logs for a
        # while): the line a person reads last.
        atexit.register(print, report_without_prefect(study, e), file=sys.stderr)
        raise SystemExit(1) from None
    if uri is None:
        raise SystemExit(f"\nthe study failed: {state.message}")
    print(f"\nreport: {uri}")


if __name__ == "__main__":
    main()

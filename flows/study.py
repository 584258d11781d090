"""Prefect flows: `train-ratio` runs one job, `ratio-study` fans ratios out and reports.

`ratio-study` launches one `train-ratio` per ratio, concurrently, in one of two ways:
- in-process (the embedded default): subflows in this process, on Prefect's ephemeral
  API when no server is configured; no worker, no Docker;
- deployments: `run_deployment` of `train-ratio/gpu` per ratio, so each ratio runs in
  its own container on a GPU work pool.
One failed ratio stops neither the others nor the report; the run then ends Failed.

    python -m flows.study        # the whole study on the embedded defaults (make study)
"""
import argparse
import dataclasses
import json
import logging
import os
from contextlib import contextmanager
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.runtime import flow_run as prefect_flow_run
from prefect.runtime import task_run as prefect_task_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import ConfigDict, ValidationError, create_model
import torch

from ratio_cnn import report
from ratio_cnn.config import LIST_OPTIONS, TrainConfig, check_name, new_run_id, ratio_name
from ratio_cnn.data import MANIFEST
from ratio_cnn.errors import RatioCnnError, StorageUnavailable
from ratio_cnn.host import utc_now
from ratio_cnn.job import run_job
from ratio_cnn.job_folder import FolderBusy
from ratio_cnn.results import RUN_FILE
from ratio_cnn.storage import join, open_storage
from ratio_cnn.synth import make_synthetic_dataset
from ratio_cnn.train import pick_device

# `make study` on a 2-core CPU: 4 ratios x 3 seeds x STUDY_EPOCHS fit in its 10-minute budget
# (measured, README); on a GPU the study's own 5 epochs and 5 seeds take seconds.
STUDY_EPOCHS = 2
CPU_SEEDS = 3
# The job's progress lines (INFO) in the flow's logs; PREFECT_LOGGING_EXTRA_LOGGERS=ratio_cnn
# (set by the Makefile and the deployments) also sends them to the Prefect UI.
logging.getLogger("ratio_cnn").setLevel(logging.INFO)
PER_JOB = ("ratio", "data", "out", "run_id")  # set by the study for each job
# The training options a study passes to every job, with TrainConfig's own defaults: one
# place holds them, and Prefect shows them as a form.
# The study's own default differs from one job's in one place: 5 replicates (the CLI's is 1).
STUDY_DEFAULTS = {"seeds": 5}
TrainingOptions = create_model(
    "TrainingOptions",
    __config__=ConfigDict(extra="forbid"),  # a misspelt option is an error, not silently the default
    **{f.name: (int | list[int] if f.name == "seeds" else f.type,
                STUDY_DEFAULTS.get(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory()))
       for f in dataclasses.fields(TrainConfig) if f.name not in PER_JOB},
)


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
def train_ratio(ratio: float, data: str, out: str, run_id: str, options: TrainingOptions = TrainingOptions()) -> dict:
    """One ratio: the same job as `ratio-cnn train`."""
    return train_job(job_config(ratio, data, out, run_id, options))


def job_config(ratio: float, data: str, out: str, run_id: str, options: TrainingOptions) -> TrainConfig:
    return TrainConfig(ratio=ratio, data=data, out=out, run_id=run_id, **options.model_dump())


@task(cache_policy=NO_CACHE)
def launch_ratio(ratio: float, data: str, out: str, run_id: str, options: TrainingOptions,
                 launch: str, train_deployment: str) -> None:
    parameters = {"ratio": ratio, "data": data, "out": out, "run_id": run_id, "options": options.model_dump()}
    if launch == "in-process":
        train_ratio(**parameters | {"options": options})
        return
    flow_run = run_deployment(name=train_deployment, parameters=parameters, timeout=None)
    if not flow_run.state.is_completed():
        raise RuntimeError(f"{train_deployment} run {flow_run.name} ended {flow_run.state.name}: {flow_run.state.message}")


@task(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=is_transient, cache_policy=NO_CACHE)
def record_run(run_uri: str, run_id: str, ratios: list[float], data: str, options: TrainingOptions, launch: str) -> None:
    meta = {"run_id": run_id, "ratios": ratios, "data": data, "options": options.model_dump(), "launch": launch,
            "started": utc_now()}
    open_storage(run_uri).put(RUN_FILE, json.dumps(meta, indent=2).encode())


@task(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=is_transient, cache_policy=NO_CACHE)
def build_report(out: str, run_id: str) -> str:
    """report.md from what the jobs wrote, published as artifacts; `latest` moves when all finished."""
    written = report.write_report(join(out, run_id))
    create_markdown_artifact(key="ratio-study-report", markdown=written.markdown,
                             description=f"run {run_id}: {written.uri}")
    create_table_artifact(key="ratio-study-summary", table=report.summary_rows(written),
                          description=f"run {run_id}")
    create_markdown_artifact(key="ratio-study-index", markdown=written.index,
                             description=f"every run under {out}")
    if written.regressions:
        get_run_logger().warning("run %s: %d headline metrics dropped beyond their interval (top of the report)",
                                 run_id, len(written.regressions))
    if all(r.metrics for r in written.results):
        latest = {"run_id": run_id, "report": written.uri, "finished": utc_now()}
        open_storage(out).put("latest.json", json.dumps(latest, indent=2).encode())
    return written.uri


@contextmanager
def cpu_threads_per_job(jobs: int):
    """Jobs side by side on a CPU get a share of its cores each, not all of them each (4 jobs x 2
    threads on 2 cores). Four jobs on 2 cores, whole study (docs/benchmarks.md): one thread each
    125 s, two each 124 s, one job at a time 136 s in fp32; 104, 116 and 115 s in an earlier bf16
    run. torch's thread count is the process's: restored afterwards."""
    before = torch.get_num_threads()
    if jobs > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@flow(name="ratio-study", task_runner=ThreadPoolTaskRunner(max_workers=8))
def ratio_study(
    ratios: list[float] = [1, 2, 3, 5],
    data: str = "data/synthetic",
    out: str = "results",
    run_id: str | None = None,
    options: TrainingOptions = TrainingOptions(),
    launch: Literal["in-process", "deployments"] = "in-process",
    train_deployment: str = "train-ratio/gpu",
):
    """Every ratio's job, concurrently, then the report; Failed if any ratio failed."""
    logger = get_run_logger()
    run_id = check_name("run id", run_id or new_run_id())  # it names a folder: nothing outside `out`
    for ratio in ratios:  # every job's options checked before any job starts
        job_config(ratio, data, out, run_id, options)
    record_run(join(out, run_id), run_id, ratios, data, options, launch)
    logger.info("run %s: ratios %s, %s, writing to %s", run_id, ", ".join(f"1:{ratio_name(r)}" for r in ratios),
                launch, join(out, run_id))
    # The jobs' own device rule; "cuda" with no GPU is left to each job, which fails saying so.
    on_cpu = options.device != "cuda" and pick_device(options.device).type == "cpu"
    with cpu_threads_per_job(len(ratios) if launch == "in-process" and on_cpu else 1):
        launches = {r: launch_ratio.submit(r, data, out, run_id, options, launch, train_deployment) for r in ratios}
        for future in launches.values():
            future.wait()
    failed = [r for r, future in launches.items() if not future.state.is_completed()]
    for ratio in failed:
        logger.error("ratio 1:%s failed: %s", ratio_name(ratio), launches[ratio].state.message)
    report_uri = build_report(out, run_id)
    logger.info("report: %s", report_uri)
    if failed:
        names = ", ".join(f"1:{ratio_name(r)}" for r in failed)
        return Failed(message=f"ratios {names} failed; the report {report_uri} shows why")
    return report_uri


def main() -> None:
    """`make study`: the synthetic dataset if missing, then the four ratios in-process."""
    on_gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description="Run the ratio study in-process (no server, no worker needed).")
    parser.add_argument("--data", default="data/synthetic", help="dataset (made if it is the missing default)")
    parser.add_argument("--out", default="results")
    parser.add_argument("--run-id", help="default: a new time-stamped id")
    parser.add_argument("--ratios", default="1,2,3,5", help="comma list (default: 1,2,3,5)")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs if on_gpu else STUDY_EPOCHS)
    parser.add_argument("--seeds", default=str(STUDY_DEFAULTS["seeds"] if on_gpu else CPU_SEEDS),
                        help="a count or a comma list")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                        help="any other training option of `ratio-cnn train`, e.g. --set val_benign=500")
    args = parser.parse_args()
    if bad := [item for item in args.set if "=" not in item]:
        parser.error(f"--set needs OPTION=VALUE, got {bad[0]!r}")
    try:
        given = {"epochs": args.epochs, "seeds": args.seeds} | dict(item.split("=", 1) for item in args.set)
        options = TrainingOptions(**{k: LIST_OPTIONS[k](v) if k in LIST_OPTIONS else v for k, v in given.items()})
        ratios = [float(r) for r in args.ratios.split(",")]
        run_id = check_name("run id", args.run_id or new_run_id())
        for ratio in ratios:  # one line here, before Prefect starts, rather than a failed flow run
            job_config(ratio, args.data, args.out, run_id, options)
    except ValidationError as e:
        first = e.errors()[0]
        raise SystemExit(f"flows.study: error: option {'.'.join(map(str, first['loc']))}: {first['msg']} (--set "
                         "OPTION=VALUE takes the options of `ratio-cnn train --help`, with underscores)") from None
    except (ValueError, RatioCnnError) as e:
        raise SystemExit(f"flows.study: error: {e} (--ratios 1,2,3,5; --set OPTION=VALUE)") from None
    if args.data == "data/synthetic" and not open_storage(args.data).exists(MANIFEST):
        print(f"making the synthetic dataset in {args.data} (about 30 s)", flush=True)
        make_synthetic_dataset(args.data)
    state = ratio_study(ratios=ratios, data=args.data, out=args.out, run_id=run_id, options=options,
                        return_state=True)
    if not state.is_completed():
        raise SystemExit(f"\nthe study failed: {state.message}")
    print(f"\nreport: {state.result()}")


if __name__ == "__main__":
    main()

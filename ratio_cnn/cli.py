"""`ratio-cnn train|data synth|data ingest|data dedupe|report|prune|cache info|cache clear`: user errors become one line and exit 2."""
import argparse
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

from ratio_cnn.config import (PRUNE_DEFAULTS, StudyConfig, StudyOptions, TrainConfig, TrainingOptions, default_cache,
                              field_default, job_fields)
from ratio_cnn.errors import RatioCnnError, Terminated
from ratio_cnn.storage import check_apart

log = logging.getLogger("ratio_cnn")
# The flags of `python -m flows.study` beside every training option (its `options`).
STUDY_FIELDS = [f for f in dataclasses.fields(StudyConfig) if f.name != "options"]


def flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def shown_default(f: dataclasses.Field, default) -> str:
    if f.metadata.get("required"):
        return "required"
    if "shown" in f.metadata:
        return f.metadata["shown"]
    if isinstance(default, bool):
        return "on" if default else "off"
    return ",".join(map(str, default)) if isinstance(default, list) else str(default)


def add_config_options(parser, config_fields, defaults: dict | None = None) -> None:
    """One flag per configuration field, with the field's description and default, so the command
    line cannot drift from config.py. `defaults` replaces the fields' own (the study's on this machine)."""
    for f in config_fields:
        default = field_default(f) if defaults is None else defaults[f.name]
        required = f.metadata.get("required", False)
        help = f.metadata["description"] + ("" if required else f" (default: {shown_default(f, default)})")
        if f.type is bool:
            parser.add_argument(flag(f), dest=f.name, action="store_true", default=default, help=help)
            continue
        choices = get_args(f.type) if get_origin(f.type) is Literal else ()
        metavar = f.metadata.get("metavar") or ("{" + ",".join(choices) + "}" if choices else f.name.upper())
        # Lists, choices and names arrive as text; the configuration parses and checks them.
        parser.add_argument(flag(f), dest=f.name, type=f.type if f.type in (int, float) else str, default=default,
                            required=required, help=help, metavar=metavar)


def field_values(args: argparse.Namespace, config_fields) -> dict:
    return {f.name: getattr(args, f.name) for f in config_fields}


def options_table(config_fields) -> str:
    """The README's table of these fields (tests/test_config.py checks it is current)."""
    rows = [f"| `{flag(f)}` | {shown_default(f, field_default(f))} | {f.metadata['description'].replace('<', '&lt;')} |"
            for f in config_fields]
    return "\n".join(["| option | default | what and why |", "|---|---|---|", *rows])


class SetOption(argparse.Action):
    """`--set val_benign=500`, the README's spelling of `--val-benign 500`: any training option by name."""

    def __call__(self, parser, namespace, item, option_string=None):
        name, sep, value = item.partition("=")
        by_name = {f.name: f for f in dataclasses.fields(StudyOptions)}
        if not sep or name not in by_name:
            parser.error(f"--set needs OPTION=VALUE with OPTION a training option, such as val_benign=500; "
                         f"got {item!r}")
        if by_name[name].type is bool:
            if value.lower() not in ("true", "false"):
                parser.error(f"--set {name} takes true or false, got {value!r}")
            setattr(namespace, name, value.lower() == "true")
        else:
            parser.parse_args([flag(by_name[name]), value], namespace)


def study_parser(options: StudyOptions) -> argparse.ArgumentParser:
    """`python -m flows.study`: StudyConfig's fields, then every job's training options, made like `train`'s."""
    parser = argparse.ArgumentParser(prog="python -m flows.study",
                                     description="Run the ratio study in-process (no server, no worker needed).")
    add_config_options(parser, STUDY_FIELDS)
    training = parser.add_argument_group(
        "training options of every job", "those of `ratio-cnn train`, with the study's seeds; the defaults "
        f"shown are this machine's (on a CPU, {StudyOptions.CPU_EPOCHS} epochs and {StudyOptions.CPU_SEEDS} seeds)")
    add_config_options(training, dataclasses.fields(StudyOptions), dataclasses.asdict(options))
    training.add_argument("--set", action=SetOption, metavar="OPTION=VALUE",
                          help="any of these by its field name, e.g. --set val_benign=500")
    return parser


def study_config(argv: list[str] | None, on_gpu: bool) -> StudyConfig:
    """The command line of `python -m flows.study` as a StudyConfig."""
    args = study_parser(StudyOptions.for_machine(on_gpu)).parse_args(argv)
    return StudyConfig(**field_values(args, STUDY_FIELDS),
                       options=StudyOptions(**field_values(args, dataclasses.fields(StudyOptions))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ratio-cnn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train and evaluate one ratio; write metrics and figures")
    add_config_options(train.add_argument_group("the job"), job_fields())
    add_config_options(train.add_argument_group("training options"), dataclasses.fields(TrainingOptions))

    data = commands.add_parser("data", help="make or import a dataset").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write a synthetic dermoscopy-like dataset (the embedded default)")
    synth.add_argument("--out", default=TrainConfig.data, help=f"where to write it (default: {TrainConfig.data})")
    # synth.py holds the study's counts; importing it here would load torch for every command.
    synth.add_argument("--malignant", type=int, help="malignant images (default: the study's count, from synth.py)")
    synth.add_argument("--benign", type=int, help="benign images (default: the study's count, from synth.py)")
    synth.add_argument("--seed", type=int, help="same seed, same images (default: synth.py's)")

    ingest = data.add_parser("ingest", help="import real images: 128x128 RGB plus manifest.csv")
    ingest.add_argument("src", help="a folder with benign/ and malignant/, or the image folder of --csv")
    ingest.add_argument("--out", required=True, help="where to write the dataset (folder, file://… or s3://…)")
    ingest.add_argument("--csv", help="ISIC-style CSV: image id column and benign_malignant, target or melanoma")
    ingest.add_argument("--max-skipped", type=float, default=TrainingOptions.max_skipped,
                        help="share of undecodable images skipped before the import fails, as a job's "
                             f"(default: {TrainingOptions.max_skipped})")

    dedupe = data.add_parser("dedupe", help="find near-duplicate images; write near_duplicates.csv, which jobs "
                             "read as the manifest column near_dup_group (docs/near-duplicates.md)")
    dedupe.add_argument("uri", help="the dataset (folder, file://… or s3://…) holding manifest.csv")
    dedupe.add_argument("--out", help="where to write the sidecar files (default: the dataset itself; a job reads "
                        "them only from there)")

    report = commands.add_parser("report", help="write report.md for a run from what its jobs wrote")
    report.add_argument("--run", required=True, help="the run folder: <out>/<run-id>")

    add_operations_commands(commands)
    return parser


def add_operations_commands(commands) -> None:
    """`ratio-cnn prune` and `ratio-cnn cache info|clear` (docs/operations.md)."""
    prune = commands.add_parser("prune", help="remove old runs' weights, predictions and working files by a "
                                "retention policy; reports, figures and metrics always stay (docs/operations.md)")
    prune.add_argument("--out", required=True, help="the results folder holding the runs (folder, file://… or s3://…)")
    prune.add_argument("--keep-last", type=int, default=PRUNE_DEFAULTS["keep_last"],
                       help=f"the newest N runs stay whole (default: {PRUNE_DEFAULTS['keep_last']})")
    prune.add_argument("--keep-days", type=float, default=PRUNE_DEFAULTS["keep_days"],
                       help="runs younger than D days stay whole too (default: none)")
    prune.add_argument("--keep-heavy", type=int, default=PRUNE_DEFAULTS["keep_heavy"],
                       help="of the runs that stay, the newest N keep their weights and predictions "
                            f"(default: {PRUNE_DEFAULTS['keep_heavy']})")
    prune.add_argument("--dry-run", action="store_true", help="list what would go and how many bytes; delete nothing")

    cache = commands.add_parser("cache", help="what the local image cache holds, or empty it")
    cache.add_argument("cache_command", choices=("info", "clear"), help="info: its sets and objects, their sizes and "
                       "last use; clear: remove all that no running job uses")
    cache.add_argument("--cache", default="", help="the cache folder (default: $RATIO_CNN_CACHE or ~/.cache/ratio-cnn)")


def run(args: argparse.Namespace) -> None:
    if args.command == "train":
        cfg = TrainConfig(**field_values(args, dataclasses.fields(TrainConfig)))
        from ratio_cnn.job import run_job  # torch and friends take seconds: check the options first

        run_job(cfg)
    elif args.command == "data" and args.data_command == "synth":
        from ratio_cnn.synth import make_synthetic_dataset

        given = {name: getattr(args, name) for name in ("malignant", "benign", "seed") if getattr(args, name) is not None}
        for name in ("malignant", "benign"):
            if given.get(name, 1) < 1:
                raise RatioCnnError(f"--{name} must be at least 1, got {given[name]}")
        make_synthetic_dataset(args.out, **given)
    elif args.command == "data" and args.data_command == "ingest":
        from ratio_cnn.ingest import ingest

        check_apart(args.src, args.out, "SRC", "--out")  # inputs are read-only (docs/reliability.md)
        if args.csv:
            check_apart(args.csv, args.out, "--csv", "--out")
        ingest(args.src, args.out, csv=args.csv, max_skipped=args.max_skipped)
    elif args.command == "data" and args.data_command == "dedupe":
        from ratio_cnn.dedupe import dedupe_dataset

        print(json.dumps(dedupe_dataset(args.uri, args.out), indent=2))
    elif args.command == "report":
        from ratio_cnn.report import write_report

        print(write_report(args.run).uri)
    elif args.command == "prune":
        from ratio_cnn.retention import Policy, prune

        print(prune(args.out, Policy(args.keep_last, args.keep_days, args.keep_heavy), dry_run=args.dry_run).summary())
    elif args.command == "cache":
        from ratio_cnn import cache

        root = Path(args.cache or default_cache())
        print(cache.describe(root) if args.cache_command == "info" else cache.clear(root))


def stop_on_sigterm(signum, frame) -> None:
    """`docker stop` and Kubernetes send SIGTERM: stop like Ctrl-C, so the job records why."""
    raise Terminated("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("botocore", "boto3", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        run(args)
    except RatioCnnError as e:
        print(f"ratio-cnn: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("ratio-cnn: stopped by SIGTERM (the job folder records it; --resume continues)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("ratio-cnn: interrupted (the job folder records it; --resume continues)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`ratio-cnn train|data synth|data ingest|report`: user errors become one line and exit 2."""
import argparse
import dataclasses
import logging
import signal
import sys

from ratio_cnn.config import TrainConfig
from ratio_cnn.errors import RatioCnnError, Terminated

log = logging.getLogger("ratio_cnn")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, so the CLI cannot drift from the configuration."""
    for f in dataclasses.fields(TrainConfig):
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        shown = f" (default: {','.join(map(str, default)) if isinstance(default, list) else default})"
        if f.type is bool:
            parser.add_argument(flag, dest=f.name, action="store_true", help=f.metadata["help"])
            continue
        # Lists arrive as text ("5", "0,3,7", "none,pos_weight"); TrainConfig parses and checks them.
        parser.add_argument(flag, dest=f.name, type=str if isinstance(default, list) else f.type, default=default,
                            required=f.name == "ratio", help=f.metadata["help"] + ("" if default is None else shown),
                            metavar=f.metadata.get("metavar", f.name.upper()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ratio-cnn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train and evaluate one ratio; write metrics and figures")
    add_train_options(train)

    data = commands.add_parser("data", help="make or import a dataset").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write a synthetic dermoscopy-like dataset (the embedded default)")
    synth.add_argument("--out", default="data/synthetic", help="where to write it (default: data/synthetic)")
    synth.add_argument("--malignant", type=int, default=393, help="malignant images (default: 393, the study's)")
    synth.add_argument("--benign", type=int, default=3465, help="benign images (default: 3465, the study's)")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same images (default: 0)")

    ingest = data.add_parser("ingest", help="import real images: 128x128 RGB plus manifest.csv")
    ingest.add_argument("src", help="a folder with benign/ and malignant/, or the image folder of --csv")
    ingest.add_argument("--out", required=True, help="where to write the dataset (folder, file://… or s3://…)")
    ingest.add_argument("--csv", help="ISIC-style CSV: image id column and benign_malignant, target or melanoma")
    ingest.add_argument("--max-skipped", type=float, default=0.01,
                        help="share of undecodable images skipped before the import fails (default: 0.01)")

    report = commands.add_parser("report", help="write report.md for a run from what its jobs wrote")
    report.add_argument("--run", required=True, help="the run folder: <out>/<run-id>")
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "train":
        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
        from ratio_cnn.job import run_job  # torch and friends take seconds: check the options first

        run_job(cfg)
    elif args.command == "data" and args.data_command == "synth":
        from ratio_cnn.synth import make_synthetic_dataset

        for name in ("malignant", "benign"):
            if getattr(args, name) < 1:
                raise RatioCnnError(f"--{name} must be at least 1, got {getattr(args, name)}")
        make_synthetic_dataset(args.out, args.malignant, args.benign, args.seed)
    elif args.command == "data" and args.data_command == "ingest":
        from ratio_cnn.ingest import ingest

        ingest(args.src, args.out, csv=args.csv, max_skipped=args.max_skipped)
    elif args.command == "report":
        from ratio_cnn.report import write_report

        print(write_report(args.run).uri)


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

"""config.py is the one home of every option: `ratio-cnn train`, `python -m flows.study` and the
README's tables are made from its fields (the Prefect forms: tests/test_flows.py)."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from ratio_cnn.cli import build_parser, options_table, study_config
from ratio_cnn.config import StudyConfig, StudyOptions, TrainConfig, TrainingOptions, job_fields
from ratio_cnn.errors import RatioCnnError

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("command, config_fields", [
    ("ratio-cnn train", [*job_fields(), *dataclasses.fields(TrainingOptions)]),
    ("python -m flows.study", dataclasses.fields(StudyConfig)),
])
def test_the_readme_tables_are_made_from_the_configuration(command, config_fields):
    table = options_table(config_fields)
    assert table in README.read_text(), f"README's table of `{command}` is stale; replace it with:\n{table}"


def test_train_flags_default_to_the_configuration():
    args = build_parser().parse_args(["train", "--ratio", "2", "--run-id", "r"])
    assert TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}) == TrainConfig(
        ratio=2, run_id="r")


def test_the_study_command_line_builds_a_study_config():
    given = ["--ratios", "1,2", "--seeds", "0,3", "--device", "cpu", "--set", "val_benign=500",
             "--set", "strategies=none,augment", "--set", "resume=true"]
    assert study_config(given, on_gpu=True) == StudyConfig(ratios=[1, 2], options=StudyOptions(
        seeds=[0, 3], device="cpu", val_benign=500, strategies=["none", "augment"], resume=True))
    assert study_config([], on_gpu=True) == StudyConfig()
    on_cpu = StudyOptions(epochs=StudyOptions.CPU_EPOCHS, seeds=StudyOptions.CPU_SEEDS)
    assert study_config([], on_gpu=False).options == on_cpu
    assert study_config(["--set", "epochs=7"], on_gpu=False).options.epochs == 7


@pytest.mark.parametrize("argv, message", [
    (["--set", "val_benign"], "--set needs OPTION=VALUE"),
    (["--set", "smote=1"], "--set needs OPTION=VALUE with OPTION a training option"),
    (["--set", "val_benign=many"], "argument --val-benign: invalid int value: 'many'"),
    (["--set", "resume=maybe"], "--set resume takes true or false, got 'maybe'"),
])
def test_the_study_command_line_refuses_a_bad_set(argv, message, capsys):
    with pytest.raises(SystemExit):
        study_config(argv, on_gpu=True)
    assert message in capsys.readouterr().err


def test_a_ratio_list_is_parsed_once_and_checked_by_each_job():
    with pytest.raises(RatioCnnError, match="ratios '1,x': give a comma list of numbers"):
        study_config(["--ratios", "1,x"], on_gpu=True)
    with pytest.raises(RatioCnnError, match="ratio must be a positive number"):
        StudyConfig(ratios="1,-2").job_configs("r")


def test_allowed_names_are_those_of_the_modules_that_own_them():
    from ratio_cnn.model import MODELS
    from ratio_cnn.strategies import STRATEGIES

    with pytest.raises(RatioCnnError, match=f"strategy smote: choose one or more of {', '.join(STRATEGIES)}, each"):
        TrainConfig(ratio=1, strategies="smote")
    with pytest.raises(RatioCnnError, match=f"model resnet: choose one or more of {', '.join(MODELS)}, each"):
        TrainConfig(ratio=1, models="resnet")


def test_options_are_parsed_and_checked_without_torch():
    """torch takes seconds to load: the CLI reports a bad number before it, and builds every parser without it."""
    code = ("import sys\n"
            "from ratio_cnn.cli import build_parser, study_config\n"
            "from ratio_cnn.config import StudyConfig, TrainingOptions\n"
            "build_parser(); study_config(['--set', 'epochs=3'], on_gpu=False)\n"
            "try:\n    TrainingOptions(epochs=0)\nexcept Exception as e:\n    print(e)\n"
            "print('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines() == ["epochs must be at least 1, got 0", "False"], result.stderr

"""The job writes what the report's validity checks read: metadata beside every prediction, what the
column alone could learn, how the split was grouped, held-out and external evaluation sets."""
import json

import pandas as pd
import pytest

from ratio_cnn.config import TrainConfig
from ratio_cnn.dedupe import GROUP_COLUMN, SIDECAR
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.job import run_job
from ratio_cnn.report import write_report
from ratio_cnn.synth import make_synthetic_dataset

TINY = dict(epochs=1, batch_size=16, train_malignant=8, val_malignant=4, val_benign=12, test_malignant=4,
            test_benign=12, device="cpu", seeds=[0, 1], cache="none")


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    """A tiny dataset with a `source` column (site b holds most malignant images) and near-duplicate
    twins recorded by a sidecar, as `ratio-cnn data dedupe` writes it; and a tiny external set."""
    root = tmp_path_factory.mktemp("validity")
    path, external = root / "data", root / "external"
    manifest = make_synthetic_dataset(str(path), malignant=30, benign=60, seed=3)
    manifest["source"] = ["b" if (label == "malignant") == (i % 4 != 0) else "a"
                          for i, label in enumerate(manifest["label"])]
    manifest.to_csv(path / "manifest.csv", index=False)
    groups = {n: n for n in manifest["image"]}
    for a, b in zip(manifest["image"][30:50:2], manifest["image"][31:51:2]):  # ten benign twins
        groups[b] = a
    pd.DataFrame({"image": list(groups), GROUP_COLUMN: list(groups.values())}).to_csv(path / SIDECAR, index=False)
    make_synthetic_dataset(str(external), malignant=6, benign=12, seed=4)
    return path, external


def test_metadata_holdout_and_external_sets_reach_predictions_metrics_and_report(annotated, tmp_path):
    data, external = annotated
    out = tmp_path / "out"
    for ratio in (1, 2):
        run_job(TrainConfig(ratio=ratio, data=str(data), out=str(out), run_id="v", group_by=GROUP_COLUMN,
                            eval_data=[f"external={external}", f"itself={data}"], **TINY))
    metrics = json.loads((out / "v" / "ratio-1" / "metrics.json").read_text())["data"]
    assert metrics["columns"] == ["source", GROUP_COLUMN]
    assert set(metrics["train_values"]) == {"source"}
    assert sum(c["malignant"] + c["benign"] for c in metrics["train_values"]["source"].values()) == 16
    assert metrics["split"]["group_by"] == GROUP_COLUMN
    assert metrics["split"]["near_duplicates"]["test_with_twin_in_train"] == 0  # grouped: no twin crosses
    assert metrics["eval_sets"]["external"]["counts"] == {"malignant": 6, "benign": 12}
    assert metrics["eval_sets"]["external"]["overlap_with_train"] == 0
    assert metrics["eval_sets"]["itself"]["overlap_with_train"] == 16  # the training images, same bytes
    predictions = pd.read_csv(out / "v" / "ratio-1" / "none" / "simple" / "seed-0" / "predictions.csv",
                              keep_default_na=False)
    assert set(predictions["split"]) == {"val", "test", "eval:external", "eval:itself"}
    test = predictions[predictions["split"] == "test"]
    assert set(test["source"]) <= {"a", "b"} and (test[GROUP_COLUMN] != "").all()
    markdown = write_report(str(out / "v")).markdown
    for heading in ("## Shortcut check", "## Subgroups", "## Calibration", "## Evaluation set"):
        assert heading in markdown
    assert "overlaps training" in markdown


def test_a_held_out_source_never_trains_and_is_evaluated_as_its_own_set(annotated, tmp_path):
    data, _ = annotated
    out = tmp_path / "out"
    sizes = TINY | dict(train_malignant=4, val_malignant=2, val_benign=4, test_malignant=2, test_benign=4)
    run_job(TrainConfig(ratio=1, data=str(data), out=str(out), run_id="h", holdout="source=a", **sizes))
    predictions = pd.read_csv(out / "h" / "ratio-1" / "none" / "simple" / "seed-0" / "predictions.csv",
                              keep_default_na=False)
    held = predictions[predictions["split"] == "eval:holdout-source-a"]
    assert len(held) and set(held["source"]) == {"a"}
    assert set(predictions[predictions["split"].isin(["val", "test"])]["source"]) == {"b"}
    described = json.loads((out / "h" / "ratio-1" / "metrics.json").read_text())["data"]
    assert described["train_values"]["source"].keys() == {"b"} and described["split"]["holdout"] == "source=a"


def test_bad_validity_options_stop_in_one_line_before_any_image_is_read(annotated, tmp_path):
    data, external = annotated
    with pytest.raises(RatioCnnError, match=r"--group-by patient_id: .* has no column 'patient_id'; its columns "
                                            r"are source, near_dup_group"):
        run_job(TrainConfig(ratio=1, data=str(data), out=str(tmp_path / "o1"), group_by="patient_id", **TINY))
    one_class = tmp_path / "one-class"
    make_synthetic_dataset(str(one_class), malignant=1, benign=6, seed=5)
    (one_class / "manifest.csv").write_text("image,label\n" + "".join(
        f"benign/synth-{i:05d}.jpg,benign\n" for i in range(6)))
    with pytest.raises(RatioCnnError, match=r"--eval-data lonely: .* lists only benign images"):
        run_job(TrainConfig(ratio=1, data=str(data), out=str(tmp_path / "o2"), eval_data=[f"lonely={one_class}"],
                            **TINY))

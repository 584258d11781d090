import numpy as np
import pandas as pd
import pytest

from ratio_cnn.config import TrainConfig
from ratio_cnn.data import class_counts, read_manifest, split_and_sample
from ratio_cnn.errors import RatioCnnError


def study_manifest(malignant=393, benign=3465) -> pd.DataFrame:
    rows = [f"malignant/m{i}.jpg,malignant" for i in range(malignant)] + [f"benign/b{i}.jpg,benign" for i in range(benign)]
    return read_manifest(("image,label\n" + "\n".join(rows)).encode(), "manifest.csv")


@pytest.mark.parametrize("ratio,benign", [(1, 293), (2, 586), (3, 879), (5, 1465)])
def test_study_counts(ratio, benign):
    sets = split_and_sample(study_manifest(), TrainConfig(ratio=ratio), "ds")
    assert class_counts(sets) == {
        "train": {"benign": benign, "malignant": 293},
        "val": {"benign": 1000, "malignant": 50},
        "test": {"benign": 1000, "malignant": 50},
    }


def test_splits_are_disjoint_and_fixed_across_ratios():
    manifest = study_manifest()
    by_ratio = {r: split_and_sample(manifest, TrainConfig(ratio=r), "ds") for r in (1, 2, 3, 5)}
    for sets in by_ratio.values():
        names = [set(df["image"]) for df in sets.values()]
        assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
        for split in ("val", "test"):
            assert set(sets[split]["image"]) == set(by_ratio[1][split]["image"])


def test_benign_training_sets_are_nested_and_malignant_identical():
    manifest = study_manifest()
    train = {r: split_and_sample(manifest, TrainConfig(ratio=r), "ds")["train"] for r in (1, 2, 3, 5)}
    benign = {r: set(df[df["label"] == "benign"]["image"]) for r, df in train.items()}
    assert benign[1] < benign[2] < benign[3] < benign[5]
    malignant = {r: set(df[df["label"] == "malignant"]["image"]) for r, df in train.items()}
    assert malignant[1] == malignant[2] == malignant[3] == malignant[5]


def test_split_seed_changes_the_split_and_seeds_do_not():
    manifest = study_manifest()
    base = split_and_sample(manifest, TrainConfig(ratio=1), "ds")
    other_seeds = split_and_sample(manifest, TrainConfig(ratio=1, seeds=[7, 8]), "ds")
    other_split = split_and_sample(manifest, TrainConfig(ratio=1, split_seed=7), "ds")
    for split in ("train", "val", "test"):
        assert list(base[split]["image"]) == list(other_seeds[split]["image"])
    assert set(base["val"]["image"]) != set(other_split["val"]["image"])


def test_per_seed_samples_redraw_training_only_and_stay_nested():
    manifest = study_manifest()
    fixed = split_and_sample(manifest, TrainConfig(ratio=1), "ds")
    by_seed = {s: {r: split_and_sample(manifest, TrainConfig(ratio=r), "ds", sample_seed=s) for r in (1, 2)}
               for s in (0, 1)}
    for s, by_ratio in by_seed.items():
        for split in ("val", "test"):
            assert list(by_ratio[1][split]["image"]) == list(fixed[split]["image"])
        train = {r: sets["train"] for r, sets in by_ratio.items()}
        benign = {r: set(df[df["label"] == "benign"]["image"]) for r, df in train.items()}
        malignant = {r: set(df[df["label"] == "malignant"]["image"]) for r, df in train.items()}
        assert benign[1] < benign[2] and malignant[1] == malignant[2]
        assert class_counts({"train": by_ratio[1]["train"]})["train"] == {"benign": 293, "malignant": 293}
    assert set(by_seed[0][1]["train"]["image"]) != set(by_seed[1][1]["train"]["image"])
    assert set(by_seed[0][1]["train"]["image"]) != set(fixed["train"]["image"])


def test_split_column_is_used_as_given():
    rows = ["image,label,split"]
    rows += [f"m{i}.jpg,malignant,{s}" for i, s in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 3)]
    rows += [f"b{i}.jpg,benign,{s}" for i, s in enumerate(["train"] * 8 + ["val"] * 5 + ["test"] * 6)]
    manifest = read_manifest("\n".join(rows).encode(), "m.csv")
    sets = split_and_sample(manifest, TrainConfig(ratio=2, train_malignant=4), "ds")
    assert class_counts(sets) == {"train": {"benign": 8, "malignant": 4}, "val": {"benign": 5, "malignant": 2},
                                  "test": {"benign": 6, "malignant": 3}}


def test_too_few_images_names_the_numbers():
    with pytest.raises(RatioCnnError, match=r"1:5 needs 293 malignant and 1465 benign .* holds 1464 benign and 293 malignant"):
        split_and_sample(study_manifest(benign=3464), TrainConfig(ratio=5), "ds")
    with pytest.raises(RatioCnnError, match=r"has 90 malignant images, fewer than val \(50\) \+ test \(50\)"):
        split_and_sample(study_manifest(malignant=90), TrainConfig(ratio=1), "ds")


def test_fractional_ratio_rounds_the_benign_count():
    sets = split_and_sample(study_manifest(), TrainConfig(ratio=1.5), "ds")
    assert class_counts(sets)["train"] == {"benign": 440, "malignant": 293}


@pytest.mark.parametrize("text,message", [
    (b"image,label\nx.jpg,melanoma\n", r"line 2: unknown label 'melanoma' for x.jpg"),
    (b"image,diagnosis\nx.jpg,nevus\n", r"lacks label"),
    (b"image,label\nx.jpg,benign\nx.jpg,benign\n", r"line 3: image x.jpg is listed twice"),
    (b"image,label,split\nx.jpg,benign,holdout\n", r"line 2: unknown split 'holdout'"),
    (b"", r"cannot read manifest.csv as CSV"),
    (b"image,label\n", r"lists no images"),
    (b"\xff\xfe\x00garbage\x00\x81", r"manifest.csv"),
])
def test_manifest_errors_name_the_line(text, message):
    with pytest.raises(RatioCnnError, match=message):
        read_manifest(text, "manifest.csv")


def test_labels_are_case_and_space_insensitive_and_extra_columns_kept():
    m = read_manifest(b"image,label,diagnosis\na.jpg, Malignant ,melanoma\n", "m.csv")
    assert list(m["label"]) == ["malignant"] and "diagnosis" in m.columns
    assert np.array_equal(m["line"], [2])


@pytest.mark.parametrize("options,message", [
    (dict(ratio=0.001), r"rounds to no benign one"),
    (dict(ratio=0), r"ratio must be a positive number"),
    (dict(ratio=float("inf")), r"ratio must be a positive number"),
    (dict(ratio=1, device="tpu"), r"device must be one of auto, cpu, cuda, got 'tpu'"),
    (dict(ratio=1, run_id="a/b"), r"run id 'a/b' is not a valid name"),
    (dict(ratio=1, run_id=".."), r"run id '..' is not a valid name"),
    (dict(ratio=1, run_id="x" * 101), r"is not a valid name: use 1-100 letters"),
    (dict(ratio=1, seeds="abc"), r"seeds 'abc': give a count"),
    (dict(ratio=1, seeds=0), r"seeds must count between 1 and 1000"),
    (dict(ratio=1, seeds="1,1"), r"lists a seed twice"),
    (dict(ratio=1, strategies="none,smote"), r"strategy none,smote: choose one or more of none, pos_weight"),
    (dict(ratio=1, models="resnet"), r"model resnet: choose one or more of simple, upgraded"),
    (dict(ratio=1, precision="fp16"), r"precision must be one of auto, fp32, bf16"),
    (dict(ratio=1, checkpoint_every=float("nan")), r"checkpoint_every must be 0 or more seconds"),
])
def test_config_rejects_bad_values(options, message):
    with pytest.raises(RatioCnnError, match=message):
        TrainConfig(**options)


@pytest.mark.parametrize("given,seeds", [("5", [0, 1, 2, 3, 4]), (3, [0, 1, 2]), ("0,3,7", [0, 3, 7]),
                                         ("7,", [7]), ([2, 9], [2, 9])])
def test_seeds_are_a_count_or_a_list(given, seeds):
    assert TrainConfig(ratio=1, seeds=given).seeds == seeds


def test_every_strategy_and_model_pair_is_a_variant():
    assert TrainConfig(ratio=2, strategies="none,augment", models="simple,upgraded").variants == [
        ("none", "simple"), ("none", "upgraded"), ("augment", "simple"), ("augment", "upgraded")]


def test_too_many_images_for_memory_stop_before_loading():
    import torch

    from ratio_cnn.data import check_memory

    check_memory(1000, torch.device("cpu"))  # 49 MB: fine anywhere
    with pytest.raises(RatioCnnError, match=r"1000000000 decoded images need 49152.0 GB, but only .* GB are free on cpu"):
        check_memory(10**9, torch.device("cpu"))

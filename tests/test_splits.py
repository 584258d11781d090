"""Splits by identity: row order changes nothing, a growing dataset keeps its test set, groups never straddle."""
import numpy as np
import pandas as pd
import pytest

from ratio_cnn.config import TrainConfig
from ratio_cnn.data import check_columns, hold_out, split_and_sample, train_values, twins_in_training
from ratio_cnn.errors import RatioCnnError

SIZES = dict(train_malignant=20, val_malignant=10, val_benign=30, test_malignant=10, test_benign=30)


def manifest(malignant: int = 60, benign: int = 200, groups: int | None = None, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = ["malignant"] * malignant + ["benign"] * benign
    df = pd.DataFrame({"image": [f"{label}/img-{i:04d}.jpg" for i, label in enumerate(labels)], "label": labels,
                       "source": rng.choice(["a", "b"], len(labels))})
    if groups:  # a lesion per image, then `groups` lesions photographed again: twins and triplets of one label
        lesion = np.arange(len(labels))
        for first in rng.choice(len(labels) - 2, groups, replace=False):
            lesion[first + 1 : first + 1 + rng.integers(1, 3)] = lesion[first]
        df["lesion"] = [f"lesion-{g}" for g in lesion]
    df["line"] = np.arange(2, len(df) + 2)
    return df


def images(sets: dict) -> dict[str, set]:
    return {name: set(df["image"]) for name, df in sets.items()}


def test_row_order_does_not_move_any_image():
    df = manifest()
    cfg = TrainConfig(ratio=2, **SIZES)
    shuffled = df.sample(frac=1, random_state=7)
    assert images(split_and_sample(df, cfg, "m")) == images(split_and_sample(shuffled, cfg, "m"))


@pytest.mark.parametrize("added", [1, 5, 20])
def test_adding_k_images_moves_at_most_2k_others_between_val_test_and_the_pool(added):
    df = manifest(malignant=60, benign=200)
    extra = manifest(malignant=added, benign=added, seed=1).assign(
        image=lambda d: d["image"].str.replace("img-", "new-"))
    cfg = TrainConfig(ratio=1, **SIZES)
    before, after = split_and_sample(df, cfg, "m"), split_and_sample(pd.concat([df, extra]), cfg, "m")
    side = lambda sets, name: "val" if name in set(sets["val"]["image"]) else (
        "test" if name in set(sets["test"]["image"]) else "pool")
    moved = [n for n in df["image"] if side(before, n) != side(after, n)]
    assert len(moved) <= 2 * (2 * added)  # 2 * added new images: at most one move per boundary each
    assert len(set(before["test"]["image"]) & set(after["test"]["image"])) >= 40 - 2 * 2 * added


def test_val_test_and_training_are_disjoint_and_nested_across_ratios():
    df = manifest()
    small, large = (split_and_sample(df, TrainConfig(ratio=r, **SIZES), "m") for r in (1, 3))
    for sets in (small, large):
        s = images(sets)
        assert not (s["train"] & s["val"]) and not (s["train"] & s["test"]) and not (s["val"] & s["test"])
    assert images(small)["val"] == images(large)["val"] and images(small)["test"] == images(large)["test"]
    assert images(small)["train"] <= images(large)["train"]


def test_a_grouped_split_never_lets_a_group_straddle_splits():
    df = manifest(malignant=80, benign=240, groups=40)
    sets = split_and_sample(df, TrainConfig(ratio=2, group_by="lesion", **SIZES), "m")
    pool = df[~df["image"].isin(set(sets["val"]["image"]) | set(sets["test"]["image"]))]
    sides = {"val": set(sets["val"]["lesion"]), "test": set(sets["test"]["lesion"]), "pool": set(pool["lesion"])}
    assert not (sides["val"] & sides["test"]) and not (sides["val"] & sides["pool"]) and not (sides["test"] & sides["pool"])
    assert twins_in_training(sets, "lesion") == {"val": 0, "test": 0}
    ungrouped = split_and_sample(df, TrainConfig(ratio=2, **SIZES), "m")
    assert sum(twins_in_training(ungrouped, "lesion").values()) > 0  # what grouping prevents


def test_a_giant_group_that_cannot_fit_names_the_numbers():
    df = manifest(malignant=60, benign=200).assign(lesion=lambda d: np.where(d["label"] == "malignant", "one", d["image"]))
    with pytest.raises(RatioCnnError, match=r"grouped by lesion cannot fill .*largest group holds \d+ images"):
        split_and_sample(df, TrainConfig(ratio=1, group_by="lesion", **SIZES), "m")


def test_holdout_and_columns_are_checked_and_held_images_never_train():
    df = manifest()
    with pytest.raises(RatioCnnError, match=r"--group-by patient: m has no column 'patient'; its columns are source"):
        check_columns(df, TrainConfig(ratio=1, group_by="patient"), "m")
    with pytest.raises(RatioCnnError, match=r"--holdout source=c: no image of m has source 'c'; its values are a, b"):
        check_columns(df, TrainConfig(ratio=1, holdout="source=c"), "m")
    rest, held = hold_out(df, "source=a")
    assert set(held["source"]) == {"a"} and set(rest["source"]) == {"b"} and len(rest) + len(held) == len(df)


def test_training_value_counts_are_what_the_column_alone_could_learn():
    df = manifest()
    sets = split_and_sample(df, TrainConfig(ratio=1, **SIZES), "m")
    counts = train_values(sets["train"], df)
    train = sets["train"]
    assert counts["source"]["a"]["malignant"] == int(((train["source"] == "a") & (train["label"] == "malignant")).sum())
    assert set(counts) == {"source"}  # image names and lines are identities, not groups

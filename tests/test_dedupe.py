"""Near-duplicate grouping on synthetic lesions: planted copies join their original, look-alikes
stay apart, groups are transitive, and the sidecar joins onto a manifest or says what is wrong."""
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from ratio_cnn import dedupe
from ratio_cnn.errors import RatioCnnError

SKIN = np.array([220.0, 180.0, 155.0])
PIGMENT = np.array([125.0, 80.0, 58.0])


def smooth_noise(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """(128, 128) random field of unit variance, correlated over about `sigma` pixels."""
    field = ndimage.gaussian_filter(rng.normal(size=(128, 128)), sigma)
    return field / field.std()


def textured_lesion(seed: int) -> np.ndarray:
    """A lobed lesion with a mottled pigment pattern on faintly textured skin, as dermoscopy shows them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:128, 0:128]
    cy, cx = 64 + rng.normal(0, 6, size=2)
    radius = rng.uniform(22, 40) * (1 + 0.12 * np.cos(3 * np.arctan2(yy - cy, xx - cx) + rng.uniform(0, 2 * np.pi)))
    inside = 1 / (1 + np.exp((np.hypot(yy - cy, xx - cx) - radius) / 2))[..., None]
    skin = SKIN * rng.uniform(0.9, 1.05) * (1 + 0.04 * smooth_noise(rng, 2.0))[..., None]
    lesion = PIGMENT * rng.uniform(0.8, 1.1) * (1 + 0.25 * smooth_noise(rng, 2.5))[..., None]
    return np.clip(skin * (1 - inside) + lesion * inside, 0, 255).astype(np.uint8)


def small_round_lesion(seed: int) -> np.ndarray:
    """A small round dark lesion on plain skin: the case where thumbnails of distinct lesions look alike."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:128, 0:128]
    cy, cx = 64 + rng.normal(0, 3, size=2)
    inside = 1 / (1 + np.exp((np.hypot(yy - cy, xx - cx) - rng.uniform(8, 14)) / 1.5))[..., None]
    skin = SKIN * rng.uniform(0.95, 1.02) * (1 + 0.01 * smooth_noise(rng, 1.5))[..., None]
    return np.clip(skin * (1 - inside) + PIGMENT * 0.85 * inside, 0, 255).astype(np.uint8)


def reencoded(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def recoloured(image: np.ndarray) -> np.ndarray:
    """Another white balance and gamma: a colour-corrected copy."""
    shifted = (image / 255.0) ** 0.8 * np.array([0.9, 1.05, 0.8]) + np.array([0.05, 0.0, 0.08])
    return np.clip(shifted * 255, 0, 255).astype(np.uint8)


def recropped(image: np.ndarray) -> np.ndarray:
    """A few pixels cut off each side (unevenly) and resized back to 128x128."""
    cut = Image.fromarray(image[5:124, 3:122])
    return np.asarray(cut.resize((128, 128), Image.Resampling.BILINEAR))


def rephotographed(image: np.ndarray) -> np.ndarray:
    """The dermoscope put down again: turned by 10 degrees, 12% closer, a few pixels off centre."""
    turned = Image.fromarray(image).rotate(10, resample=Image.Resampling.BILINEAR, translate=(5, -4),
                                           fillcolor=(222, 180, 155))
    return np.asarray(turned.resize((143, 143), Image.Resampling.BILINEAR))[8:136, 7:135]


COPIES = {
    "recoloured": lambda x: recoloured(x),
    "recropped": lambda x: recropped(x),
    "re-encoded": lambda x: reencoded(x, 50),
    "all three": lambda x: reencoded(recropped(recoloured(x)), 70),
    "rephotographed": lambda x: reencoded(rephotographed(x), 85),
}


@pytest.fixture(scope="module")
def planted():
    """10 textured lesions, 10 small round ones, and a copy of each of the first five textured ones."""
    originals = {f"lesion-{i}": textured_lesion(i) for i in range(10)}
    originals |= {f"round-{i}": small_round_lesion(100 + i) for i in range(10)}
    copies = {f"lesion-{i} {kind}": make(originals[f"lesion-{i}"]) for i, (kind, make) in enumerate(COPIES.items())}
    images = {name: reencoded(x, 90) for name, x in originals.items()} | copies  # stored as datasets store them
    names = list(images)
    return names, np.stack([images[n] for n in names]), dedupe.find_near_duplicates(np.stack(list(images.values())),
                                                                                   names)


def test_planted_copies_join_their_original_and_nothing_else(planted):
    names, _, found = planted
    group = dict(zip(found.groups["image"], found.groups[dedupe.GROUP_COLUMN]))
    for i, kind in enumerate(COPIES):
        assert group[f"lesion-{i} {kind}"] == group[f"lesion-{i}"] == f"lesion-{i}", kind
    together = found.groups[found.groups.duplicated(dedupe.GROUP_COLUMN, keep=False)]
    assert sorted(together["image"]) == sorted([f"lesion-{i}" for i in range(len(COPIES))] +
                                               [f"lesion-{i} {kind}" for i, kind in enumerate(COPIES)])
    assert len(found.pairs) == len(COPIES) and (found.pairs["score"] >= dedupe.THRESHOLD).all()


def test_small_round_lesions_are_candidates_but_stay_apart(planted):
    names, images, found = planted
    rounds = [i for i, n in enumerate(names) if n.startswith("round-")]
    scored = dedupe.score_candidates(images)
    among_rounds = scored[scored["i"].isin(rounds) & scored["j"].isin(rounds)]
    assert len(among_rounds) >= 20  # their thumbnails are alike, so the fine comparison did see them
    assert (among_rounds["score"] < dedupe.THRESHOLD).all()
    assert found.groups.set_index("image").loc[[names[i] for i in rounds], dedupe.GROUP_COLUMN].is_unique


def test_groups_are_transitive_and_named_after_their_first_image():
    names = ["e", "b", "d", "a", "c", "f"]
    # b~d, d~a (a chain), c~f; e alone
    groups = dedupe.group_names(names, np.array([[1, 2], [2, 3], [4, 5]]))
    assert groups == ["e", "a", "a", "a", "c", "c"]


def test_no_images_or_one_image_give_no_pairs():
    one = dedupe.find_near_duplicates(textured_lesion(0)[None], ["only"])
    assert one.pairs.empty and one.groups[dedupe.GROUP_COLUMN].tolist() == ["only"]
    none = dedupe.find_near_duplicates(np.zeros((0, 128, 128, 3), dtype=np.uint8), [])
    assert none.pairs.empty and none.groups.empty


def write_dataset(folder, images: dict[str, np.ndarray]) -> None:
    for name, image in images.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / name, quality=95)
    labels = ["malignant" if i % 3 == 0 else "benign" for i in range(len(images))]
    pd.DataFrame({"image": list(images), "label": labels}).to_csv(folder / "manifest.csv", index=False)


def test_dedupe_dataset_writes_the_sidecar_to_out_and_it_joins(tmp_path):
    dataset, out = tmp_path / "dataset", tmp_path / "groups"
    original = textured_lesion(3)
    write_dataset(dataset, {"benign/a.jpg": original, "benign/b.jpg": textured_lesion(4),
                            "malignant/c.jpg": recoloured(original), "benign/d.jpg": small_round_lesion(7)})
    summary = dedupe.dedupe_dataset(str(dataset), out=str(out))
    assert (summary["pairs"], summary["groups"], summary["images_in_groups"]) == (1, 1, 2)
    assert not (dataset / dedupe.SIDECAR).exists()  # the dataset may be read-only: only --out is written
    pairs = pd.read_csv(out / dedupe.PAIRS)
    assert {pairs.loc[0, "image"], pairs.loc[0, "twin"]} == {"benign/a.jpg", "malignant/c.jpg"}

    manifest = pd.read_csv(dataset / "manifest.csv", dtype=str)
    joined = dedupe.attach_groups(manifest, (out / dedupe.SIDECAR).read_bytes())
    assert dict(zip(joined["image"], joined[dedupe.GROUP_COLUMN])) == {
        "benign/a.jpg": "benign/a.jpg", "malignant/c.jpg": "benign/a.jpg",
        "benign/b.jpg": "benign/b.jpg", "benign/d.jpg": "benign/d.jpg"}


def test_dedupe_dataset_writes_beside_the_manifest_by_default(tmp_path):
    write_dataset(tmp_path, {"benign/a.jpg": textured_lesion(1), "benign/broken.jpg": textured_lesion(5),
                             "malignant/b.jpg": textured_lesion(2)})
    (tmp_path / "benign" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a whole JPEG")
    summary = dedupe.dedupe_dataset(str(tmp_path))
    assert summary["undecodable"] == ["benign/broken.jpg"]
    sidecar = pd.read_csv(tmp_path / dedupe.SIDECAR)  # every manifest image, in its order; the broken one alone
    assert sidecar["image"].tolist() == ["benign/a.jpg", "benign/broken.jpg", "malignant/b.jpg"]
    assert sidecar[dedupe.GROUP_COLUMN].tolist() == sidecar["image"].tolist()


SIDECAR = (b"image,near_dup_group\nbenign/a.jpg,benign/a.jpg\nmalignant/c.jpg,benign/a.jpg\n"
           b"benign/old.jpg,benign/old.jpg\n")


def test_the_sidecar_join_names_an_image_it_lacks():
    manifest = pd.DataFrame({"image": ["benign/a.jpg", "benign/new.jpg", "malignant/c.jpg"],
                             "label": ["benign", "benign", "malignant"]})
    with pytest.raises(RatioCnnError) as error:
        dedupe.attach_groups(manifest, SIDECAR, "s3://b/ds/near_duplicates.csv")
    message = str(error.value)
    assert "\n" not in message
    for part in ("s3://b/ds/near_duplicates.csv", "benign/new.jpg", "1 of the manifest's 3", "ratio-cnn data dedupe"):
        assert part in message


def test_the_sidecar_join_ignores_images_no_longer_listed():
    manifest = pd.DataFrame({"image": ["malignant/c.jpg"], "label": ["malignant"]})
    assert dedupe.attach_groups(manifest, SIDECAR)[dedupe.GROUP_COLUMN].tolist() == ["benign/a.jpg"]


@pytest.mark.parametrize("sidecar, expected", [
    (b"image,group\nbenign/a.jpg,x\n", "not image,near_dup_group"),
    (b"", "cannot read"),
])
def test_a_sidecar_of_another_shape_is_refused(sidecar, expected):
    manifest = pd.DataFrame({"image": ["benign/a.jpg"], "label": ["benign"]})
    with pytest.raises(RatioCnnError, match=expected):
        dedupe.attach_groups(manifest, sidecar)

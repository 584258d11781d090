"""The synthetic dataset: seeded, shaped like a dataset, and the classes differ as designed."""
import numpy as np
import pandas as pd

from ratio_cnn.synth import make_synthetic_dataset, render_lesion


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_synthetic_dataset(str(tmp_path / name), malignant=3, benign=5, seed=seed)
    manifest = pd.read_csv(tmp_path / "a" / "manifest.csv")
    assert manifest["label"].value_counts().to_dict() == {"benign": 5, "malignant": 3}
    first = manifest["image"][0]
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()


def lesion_area(image: np.ndarray) -> float:
    """Share of pixels clearly darker than the skin around the centre."""
    centre = image[32:96, 32:96].astype(float).mean(axis=2)
    return float((centre < 0.75 * np.median(image[4:20, 40:88].astype(float).mean(axis=2))).mean())


def test_malignant_lesions_are_larger_on_average_but_overlap():
    images = {m: [render_lesion(np.random.default_rng([9, m, i]), bool(m)) for i in range(60)] for m in (0, 1)}
    assert all(img.shape == (128, 128, 3) and img.dtype == np.uint8 for imgs in images.values() for img in imgs)
    area = {m: np.array([lesion_area(img) for img in imgs]) for m, imgs in images.items()}
    assert area[1].mean() > 1.3 * area[0].mean()
    # Overlap: some benign lesions are larger than some malignant ones (not separable by size).
    assert area[0].max() > area[1].min()

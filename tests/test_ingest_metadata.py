"""`data ingest` keeps the metadata that comes with the images: a source manifest.csv beside
benign/ and malignant/, or the other columns of an ISIC-style CSV."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ratio_cnn.data import read_manifest
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.ingest import ingest


def write_image(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def folder_source(tmp_path, manifest: str | None):
    """src/benign/{a,b}.png, src/malignant/c.png (and sub/d.jpg), plus src/manifest.csv if given."""
    src = tmp_path / "src"
    for seed, name in enumerate(["benign/a.png", "benign/b.png", "malignant/c.png", "malignant/sub/d.jpg"]):
        write_image(src / name, seed)
    if manifest is not None:
        (src / "manifest.csv").write_text(manifest)
    return src


# The shared ISIC folder's columns, with values that must survive as text: a leading zero,
# a comma, and the ISIC `source` (a dataset name), which must not be taken for a file path.
ISIC_STYLE = (
    "image,label,diagnosis,isic_id,source,source_split,\"site, detail\"\n"
    "benign/a.png,benign,nevus,007,isic2017_walid,train,\"back, upper\"\n"
    "benign/b.png,benign,seborrheic keratosis,ISIC_2,isic9class_amit,test,\n"
    "malignant/c.png,malignant,melanoma,ISIC_3,isic2017_walid,train,face\n"
    "malignant/sub/d.jpg,malignant,basal cell carcinoma,ISIC_4,isic9class_amit,train,scalp\n"
)


def read_written(out) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False).set_index("image")


def test_folder_manifest_columns_travel_with_their_images(tmp_path):
    src = folder_source(tmp_path, ISIC_STYLE)
    out = tmp_path / "out"
    summary = ingest(str(src), str(out))
    manifest = read_written(out)
    assert list(manifest.columns) == ["label", "diagnosis", "isic_id", "source", "source_split", "site, detail",
                                      "source_path"]
    assert manifest.loc["benign/a.jpg", "isic_id"] == "007"  # text, not the number 7
    assert manifest.loc["benign/a.jpg", "site, detail"] == "back, upper"
    assert manifest.loc["benign/b.jpg", "site, detail"] == ""
    assert manifest.loc["malignant/sub/d.jpg", "diagnosis"] == "basal cell carcinoma"
    # The metadata's own `source` wins; the file path is kept under source_path.
    assert manifest.loc["benign/b.jpg", "source"] == "isic9class_amit"
    assert manifest.loc["malignant/c.jpg", "source_path"] == str(src / "malignant" / "c.png")
    assert summary["metadata"]["columns"] == ["diagnosis", "isic_id", "source", "source_split", "site, detail"]
    assert json.loads((out / "ingest.json").read_text())["metadata"]["from"] == str(src / "manifest.csv")
    # What a job reads keeps them too.
    read = read_manifest((out / "manifest.csv").read_bytes(), "manifest.csv")
    assert dict(zip(read["image"], read["source"]))["malignant/c.jpg"] == "isic2017_walid"


def test_without_a_source_manifest_only_the_path_is_added(tmp_path):
    out = tmp_path / "out"
    ingest(str(folder_source(tmp_path, None)), str(out))
    assert list(read_written(out).columns) == ["label", "source_path"]


def test_images_the_source_manifest_does_not_list_get_empty_values(tmp_path, caplog):
    listed_once = ISIC_STYLE.splitlines()[0] + "\n" + ISIC_STYLE.splitlines()[3] + "\n"
    src = folder_source(tmp_path, listed_once)
    out = tmp_path / "out"
    ingest(str(src), str(out))
    manifest = read_written(out)
    assert manifest.loc["malignant/c.jpg", "diagnosis"] == "melanoma"
    assert manifest.loc["benign/a.jpg", "diagnosis"] == ""
    assert "does not list 3 of 4 images" in caplog.text


@pytest.mark.parametrize("manifest, expected", [
    ("name,diagnosis\nbenign/a.png,nevus\n", ["manifest.csv", "no image column", "add one"]),
    ("image,diagnosis\nbenign/a.png,nevus\nbenign/zz.png,nevus\n",
     ["manifest.csv line 3", "benign/zz.png", "not an image under", "fix the path"]),
    ("image,diagnosis\nbenign/a.png,nevus\nbenign/a.png,nevus\n", ["manifest.csv line 3", "listed twice"]),
    ("image,label\nbenign/a.png,malignant\n", ["manifest.csv line 2", "'malignant'", "in benign/"]),
    ("image,source_path\nbenign/a.png,x\n", ["manifest.csv", "'source_path'", "rename that column"]),
])
def test_a_bad_source_manifest_stops_before_anything_is_written(tmp_path, manifest, expected):
    src = folder_source(tmp_path, manifest)
    out = tmp_path / "out"
    with pytest.raises(RatioCnnError) as error:
        ingest(str(src), str(out))
    message = str(error.value)
    assert "\n" not in message and str(src) in message
    for part in expected:
        assert part in message
    assert not out.exists()


def test_isic_csv_columns_travel_but_its_label_columns_do_not(tmp_path):
    images = tmp_path / "images"
    for seed, image_id in enumerate(["ISIC_1", "ISIC_2"]):
        write_image(images / f"{image_id}.jpg", seed)
    csv = tmp_path / "train.csv"
    csv.write_text(
        "image_name,patient_id,lesion_id,sex,age_approx,anatom_site_general,diagnosis,benign_malignant,target\n"
        "ISIC_1,IP_01,L_1,male,45.0,torso,nevus,benign,0\n"
        "ISIC_2,IP_01,L_2,,,head/neck,melanoma,malignant,1\n"
    )
    out = tmp_path / "out"
    ingest(str(images), str(out), csv=str(csv))
    manifest = read_written(out)
    assert list(manifest.columns) == ["label", "image_name", "patient_id", "lesion_id", "sex", "age_approx",
                                      "anatom_site_general", "diagnosis", "source_path"]
    assert manifest.loc["malignant/ISIC_2.jpg"].to_dict() == {
        "label": "malignant", "image_name": "ISIC_2", "patient_id": "IP_01", "lesion_id": "L_2", "sex": "",
        "age_approx": "", "anatom_site_general": "head/neck", "diagnosis": "melanoma",
        "source_path": str(images / "ISIC_2.jpg")}
    assert manifest.loc["benign/ISIC_1.jpg", "age_approx"] == "45.0"

"""Bad input, end to end through the real CLI: one clear line, a non-zero exit, no traceback,
and nothing half-written that looks complete.

Every case runs `python -m ratio_cnn.cli` in a subprocess, as a user would. Most fail before
training: a train case costs the CLI's imports (torch, torchvision, scikit-learn: ~4-6 s on a
small CPU), an ingest or synth case ~2 s; the one that trains is marked slow.
"""
import io
import json
import random
import shutil
import time

import boto3
import numpy as np
import pandas as pd
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from conftest import SMALL_SPLITS, free_port, run_cli, start_moto

pytestmark = pytest.mark.slow  # the real CLI in a subprocess, as a user runs it

PREFIX = "ratio-cnn: error:"
# Every malignant image of the small dataset is used (12 val + test, 12 train), so damaging
# one of them always reaches the loader, whatever the split seed does with the benign ones.
VICTIM = "malignant/synth-00003.jpg"
FAKE_KEYS = {"AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKEFAKE", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
             "AWS_DEFAULT_REGION": "us-east-1"}


# -----------------------------------------------------------------------------
# helpers


def error_line(result, *names: str, prefix: str = PREFIX) -> str:
    """Assert the CLI failed the way a user should see it; return its one error line."""
    assert result.returncode == 2, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines, "no error message on stderr"
    last = lines[-1]
    assert last.startswith(prefix), last
    for name in names:
        assert name in last, f"{name!r} not named in: {last}"
    return last


def assert_not_complete(out) -> None:
    """A failed train job leaves no metrics.json (nor model) that would make it look done."""
    assert not list(out.rglob("metrics.json")), list(out.rglob("*"))
    assert not list(out.rglob("model.pt")), list(out.rglob("*"))


def train(data, out, *extra: str, ratio: str = "1", env: dict | None = None):
    return run_cli("train", "--ratio", ratio, "--data", str(data), "--out", str(out), "--run-id", "bad",
                   "--epochs", "1", "--batch-size", "16", "--workers", "4", "--device", "cpu",
                   *SMALL_SPLITS, *extra, env=env)


@pytest.fixture
def dataset(small_dataset, tmp_path):
    """A private copy of the small dataset, to damage."""
    path = tmp_path / "data"
    shutil.copytree(small_dataset, path)
    return path


def manifest_line(dataset, image: str) -> int:
    df = pd.read_csv(dataset / "manifest.csv")
    return int(df.index[df["image"] == image][0]) + 2  # line 1 is the header


def encode(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def rgb(size=(128, 128), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# Non-RGB images of every kind a real collection holds, as (file suffix, bytes).
NON_RGB = {
    "grayscale": (".jpg", lambda: encode(rgb().convert("L"), "JPEG")),
    "rgba": (".png", lambda: encode(rgb().convert("RGBA"), "PNG")),
    "cmyk": (".jpg", lambda: encode(rgb().convert("CMYK"), "JPEG")),
    "16-bit": (".png", lambda: encode(Image.fromarray(np.full((128, 128), 40000, dtype=np.uint16)), "PNG")),
    "palette": (".png", lambda: encode(rgb().convert("P"), "PNG")),
}


def replace_image(dataset, image: str, suffix: str, raw: bytes) -> str:
    """Put `raw` in place of `image` as <stem><suffix> and point the manifest at it."""
    (dataset / image).unlink()
    new = image.rsplit(".", 1)[0] + suffix
    (dataset / new).write_bytes(raw)
    df = pd.read_csv(dataset / "manifest.csv")
    df.loc[df["image"] == image, "image"] = new
    df.to_csv(dataset / "manifest.csv", index=False)
    return new


# -----------------------------------------------------------------------------
# train: undecodable images are skipped and counted, up to --max-skipped


def truncate(path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def random_bytes(path) -> None:
    path.write_bytes(random.Random(0).randbytes(5000))


@pytest.mark.parametrize("damage", [truncate, random_bytes], ids=["truncated", "random-bytes"])
def test_undecodable_image_over_the_limit_fails(dataset, tmp_path, damage):
    damage(dataset / VICTIM)
    out = tmp_path / "out"
    last = error_line(train(dataset, out), VICTIM, "could not be decoded", "--max-skipped")
    assert "1 of 76 images" in last  # 24 malignant + 12 benign training + 20 + 20 benign val/test
    assert_not_complete(out)


def test_undecodable_image_within_the_limit_is_skipped_and_counted(dataset, tmp_path):
    truncate(dataset / VICTIM)
    out = tmp_path / "out"
    result = train(dataset, out, "--max-skipped", "0.5")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    metrics = json.loads((out / "bad" / "ratio-1" / "metrics.json").read_text())
    assert metrics["data"]["skipped_images"] == [VICTIM]
    counts = metrics["data"]["counts"]
    assert sum(c["malignant"] for c in counts.values()) == 23  # 24 listed, one skipped
    assert sum(c["benign"] for c in counts.values()) == 52


# -----------------------------------------------------------------------------
# train: images that decode but are not what the model takes


@pytest.mark.parametrize("kind", ["grayscale", "rgba", "cmyk", "16-bit"])
def test_non_rgb_image_stops_and_points_to_ingest(dataset, tmp_path, kind):
    suffix, make = NON_RGB[kind]
    name = replace_image(dataset, VICTIM, suffix, make())
    out = tmp_path / "out"
    error_line(train(dataset, out), name, "not 8-bit RGB", "ratio-cnn data ingest")
    assert_not_complete(out)


def test_image_of_another_size_stops(dataset, tmp_path):
    (dataset / VICTIM).write_bytes(encode(rgb((64, 64)), "JPEG"))
    out = tmp_path / "out"
    error_line(train(dataset, out), VICTIM, "64x64", "128x128", "ratio-cnn data ingest")
    assert_not_complete(out)


# -----------------------------------------------------------------------------
# train: the manifest


@pytest.mark.parametrize("content, says", [
    (random.Random(0).randbytes(3000), "cannot read"),
    (b"image,diagnosis\nmalignant/synth-00000.jpg,melanoma\n", "lacks label"),
    (b"", "cannot read"),
    (b"image,label\nmalignant/synth-00000.jpg,malignant,extra\n", "line 2 has more fields"),
], ids=["binary-garbage", "no-label-column", "empty", "extra-field"])
def test_unreadable_manifest(dataset, tmp_path, content, says):
    (dataset / "manifest.csv").write_bytes(content)
    out = tmp_path / "out"
    error_line(train(dataset, out), "manifest.csv", says, "image,label")
    assert_not_complete(out)


def test_unknown_label_names_line_and_value(dataset, tmp_path):
    df = pd.read_csv(dataset / "manifest.csv")
    df.loc[4, "label"] = "melanoma"
    df.to_csv(dataset / "manifest.csv", index=False)
    out = tmp_path / "out"
    error_line(train(dataset, out), "manifest.csv line 6", "'melanoma'", df.loc[4, "image"], "malignant or benign")
    assert_not_complete(out)


def test_listed_image_missing_names_image_and_line(dataset, tmp_path):
    (dataset / VICTIM).unlink()
    out = tmp_path / "out"
    error_line(train(dataset, out), VICTIM, f"manifest.csv line {manifest_line(dataset, VICTIM)}", "does not exist")
    assert_not_complete(out)


def test_missing_manifest_says_how_to_make_one(tmp_path):
    (tmp_path / "empty").mkdir()
    error_line(train(tmp_path / "empty", tmp_path / "out"), "manifest.csv", "ratio-cnn data")


# -----------------------------------------------------------------------------
# train: the ratio


@pytest.mark.parametrize("ratio", ["0", "-1", "nan"])
def test_ratio_not_a_positive_number(dataset, tmp_path, ratio):
    out = tmp_path / "out"
    error_line(train(dataset, out, ratio=ratio), "ratio must be a positive number", f"got {float(ratio)!r}")
    assert not out.exists()  # refused before anything was opened


def test_ratio_not_a_number_is_a_usage_error(dataset, tmp_path):
    out = tmp_path / "out"
    error_line(train(dataset, out, ratio="abc"), "--ratio", "'abc'", prefix="ratio-cnn train: error:")
    assert not out.exists()


def test_ratio_too_large_for_the_data(dataset, tmp_path):
    out = tmp_path / "out"
    # 1:50 of 12 malignant is 600 benign; the 80 benign less 20 val and 20 test leave 40.
    error_line(train(dataset, out, ratio="50"), "1:50", "600 benign", "40 benign", "--train-malignant")
    assert_not_complete(out)


# -----------------------------------------------------------------------------
# train: object storage


def test_unreachable_endpoint_names_it(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "out"
    started = time.monotonic()
    result = train("s3://somebucket/ds", out, env={**FAKE_KEYS, "AWS_ENDPOINT_URL": endpoint})
    assert time.monotonic() - started < 90
    error_line(result, f"cannot reach the S3 endpoint {endpoint}", "s3://somebucket/ds", "AWS_ENDPOINT_URL")
    assert_not_complete(out)


@pytest.fixture
def auth_moto():
    """A second moto server that checks credentials: unknown access keys are refused."""
    proc, endpoint = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


def test_bad_credentials(auth_moto, tmp_path):
    client = boto3.client("s3", endpoint_url=auth_moto, aws_access_key_id=FAKE_KEYS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=FAKE_KEYS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    with pytest.raises(ClientError) as refused:  # the server really does check keys
        client.list_buckets()
    assert refused.value.response["Error"]["Code"] == "InvalidAccessKeyId"

    out = tmp_path / "out"
    result = train("s3://somebucket/ds", out, env={**FAKE_KEYS, "AWS_ENDPOINT_URL": auth_moto})
    error_line(result, "s3://somebucket/ds", "refused", "credentials", "AWS_ACCESS_KEY_ID")
    assert_not_complete(out)


def test_missing_bucket_names_it(s3, tmp_path):
    out = tmp_path / "out"
    error_line(train("s3://no-such-bucket/ds", out), "bucket 'no-such-bucket' does not exist")
    assert_not_complete(out)


# -----------------------------------------------------------------------------
# data ingest


def test_ingest_converts_every_mode_and_size(tmp_path):
    src = tmp_path / "src"
    for label in ("benign", "malignant"):
        (src / label).mkdir(parents=True)
        for kind, (suffix, make) in NON_RGB.items():
            (src / label / f"{kind}{suffix}").write_bytes(make())
        (src / label / "large.jpg").write_bytes(encode(rgb((300, 200)), "JPEG"))
        (src / label / "rgb.png").write_bytes(encode(rgb(), "PNG"))
    out = tmp_path / "out"
    result = run_cli("data", "ingest", str(src), "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 2 * (len(NON_RGB) + 2)
    assert sorted(manifest["label"].unique()) == ["benign", "malignant"]
    for name in manifest["image"]:
        with Image.open(out / name) as img:
            assert (img.mode, img.size) == ("RGB", (128, 128)), name
    with Image.open(out / "benign" / "16-bit.jpg") as img:  # 40000 of 65535 is mid-grey, not clipped white
        assert abs(np.asarray(img).mean() - 40000 / 65535 * 255) < 3
    assert json.loads((out / "ingest.json").read_text())["skipped"] == []


def folder_source(tmp_path, corrupt: str) -> tuple:
    src = tmp_path / "src"
    for label in ("benign", "malignant"):
        (src / label).mkdir(parents=True)
        for i in range(3):
            (src / label / f"{label}-{i}.jpg").write_bytes(encode(rgb(seed=i), "JPEG"))
    bad = src / "malignant" / corrupt
    bad.write_bytes(random.Random(1).randbytes(2000))
    return src, bad


def test_ingest_corrupt_image_over_the_limit_writes_nothing(tmp_path):
    src, bad = folder_source(tmp_path, "broken.jpg")
    out = tmp_path / "out"
    error_line(run_cli("data", "ingest", str(src), "--out", str(out)), str(bad), "could not be decoded",
               "nothing was written")
    assert not (out / "manifest.csv").exists()
    assert not (out / "ingest.json").exists()


def test_ingest_corrupt_image_within_the_limit_is_skipped(tmp_path):
    src, bad = folder_source(tmp_path, "broken.jpg")
    out = tmp_path / "out"
    result = run_cli("data", "ingest", str(src), "--out", str(out), "--max-skipped", "0.5")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "ingest.json").read_text())["skipped"] == [str(bad)]
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 6 and "malignant/broken.jpg" not in set(manifest["image"])
    assert not (out / "malignant" / "broken.jpg").exists()


@pytest.mark.parametrize("share", ["1", "-0.1"])
def test_ingest_max_skipped_must_be_a_share(tmp_path, share):
    src, _ = folder_source(tmp_path, "broken.jpg")
    out = tmp_path / "out"
    error_line(run_cli("data", "ingest", str(src), "--out", str(out), "--max-skipped", share),
               "--max-skipped", f"got {float(share)}")
    assert not out.exists()


def isic_source(tmp_path, rows: list[tuple[str, str]]) -> tuple:
    images = tmp_path / "images"
    images.mkdir()
    for i, (image_id, _) in enumerate(rows):
        (images / f"{image_id}.jpg").write_bytes(encode(rgb((160, 120), seed=i), "JPEG"))
    csv = tmp_path / "train.csv"
    csv.write_text("image_id,patient_id,target\n" + "".join(f"{i},P{n},{t}\n" for n, (i, t) in enumerate(rows)))
    return images, csv


ISIC_ROWS = [("ISIC_0000001", "0"), ("ISIC_0000002", "1"), ("ISIC_0000003", "0"), ("ISIC_0000004", "1")]


def test_ingest_isic_csv(tmp_path):
    images, csv = isic_source(tmp_path, ISIC_ROWS)
    out = tmp_path / "out"
    result = run_cli("data", "ingest", str(images), "--csv", str(csv), "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = pd.read_csv(out / "manifest.csv")
    assert dict(zip(manifest["image"], manifest["label"])) == {
        "benign/ISIC_0000001.jpg": "benign", "malignant/ISIC_0000002.jpg": "malignant",
        "benign/ISIC_0000003.jpg": "benign", "malignant/ISIC_0000004.jpg": "malignant"}
    for name in manifest["image"]:
        with Image.open(out / name) as img:
            assert (img.mode, img.size) == ("RGB", (128, 128))


def test_ingest_csv_row_without_image(tmp_path):
    images, csv = isic_source(tmp_path, ISIC_ROWS)
    (images / "ISIC_0000003.jpg").unlink()
    out = tmp_path / "out"
    error_line(run_cli("data", "ingest", str(images), "--csv", str(csv), "--out", str(out)),
               f"{csv} line 4", "ISIC_0000003")
    assert not (out / "manifest.csv").exists()


def test_ingest_csv_unknown_target(tmp_path):
    images, csv = isic_source(tmp_path, [*ISIC_ROWS[:2], ("ISIC_0000003", "2"), ISIC_ROWS[3]])
    out = tmp_path / "out"
    error_line(run_cli("data", "ingest", str(images), "--csv", str(csv), "--out", str(out)),
               f"{csv} line 4", "target is '2'", "ISIC_0000003")
    assert not (out / "manifest.csv").exists()


# -----------------------------------------------------------------------------
# data synth


@pytest.mark.parametrize("option", ["--malignant", "--benign"])
def test_synth_needs_images_of_both_labels(tmp_path, option):
    out = tmp_path / "out"
    error_line(run_cli("data", "synth", "--out", str(out), option, "0"), f"{option} must be at least 1, got 0")
    assert not (out / "manifest.csv").exists()

"""What a job read, as digests: recorded in its folder and its checkpoints, compared on resume.

- the data digest: the manifest's digest and the content hash (SHA-256) of every image the job
  used, with the digest of each --eval-data set made the same way, so two runs with the same data
  digest trained and evaluated on the same pixels and labels (history.py compares runs by it);
- the split: a digest of the ordered image names of val, test and each seed's training sample;
- the record (`data.json` of the job folder): both, and every used image's content hash, so that a
  resumed job on changed data can say what changed.
"""
import hashlib

from ratio_cnn.errors import RatioCnnError


class DataChanged(RatioCnnError):
    """A resumed job whose data is not what its earlier attempt read: resuming again cannot help."""


def _sha256(parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\0")
    return "sha256:" + h.hexdigest()


def data_digest(manifest_digest: str, content: dict[str, str], eval_sets: dict[str, str] | None = None) -> str:
    """The manifest's digest and every used image's name and content hash, in name order; then the
    data digest of every extra evaluation set, by name."""
    return _sha256([manifest_digest, *(f"{name}\0{content[name]}" for name in sorted(content)),
                    *(f"eval:{name}\0{digest}" for name, digest in sorted((eval_sets or {}).items()))])


def names_digest(names) -> str:
    """The images of one split, in the order the job holds them (order changes batches and results)."""
    return _sha256(names)


def data_record(manifest_digest: str, content: dict[str, str], splits: dict[int, dict[str, list[str]]],
                eval_sets: dict[str, str]) -> dict:
    """data.json: what the job reads. `splits`: seed -> train, val, test -> the names of its images;
    `eval_sets`: the data digest of each --eval-data set."""
    first = next(iter(splits.values()))
    return {"data_digest": data_digest(manifest_digest, content, eval_sets), "manifest_digest": manifest_digest,
            "eval_sets": eval_sets,
            "split": {"val": names_digest(first["val"]), "test": names_digest(first["test"]),
                      "train": {str(seed): names_digest(s["train"]) for seed, s in splits.items()}},
            "images": dict(sorted(content.items()))}


def seed_binding(record: dict, seed: int) -> dict:
    """What a checkpoint of `seed` records it was trained on: the data, and its own split."""
    split = record["split"]
    return {"data": record["data_digest"],
            "split": names_digest([split["val"], split["test"], split["train"][str(seed)]])}


def claim_binding(record: dict) -> dict:
    """What the claim records of the data (the record without its list of images)."""
    return {k: record[k] for k in ("data_digest", "manifest_digest", "split")}


def check_same_data(before: dict, now: dict, where: str) -> None:
    """Stop a resumed job whose data is not what the earlier attempt read, saying what changed."""
    try:
        same = before["data_digest"] == now["data_digest"] and before["split"] == now["split"]
        old = before["images"]
        changed = sum(old[n] != h for n, h in now["images"].items() if n in old)
        added, removed = len(now["images"].keys() - old.keys()), len(old.keys() - now["images"].keys())
    except (KeyError, TypeError, AttributeError):
        raise DataChanged(f"{where} does not say what the earlier attempt read (it was damaged, or written by "
                            "another version): start again with a new --run-id") from None
    if same:
        return
    told = [f"{added} image(s) added, {removed} removed, {changed} changed among those the job uses"]
    if before.get("manifest_digest") != now["manifest_digest"]:
        told.append("manifest.csv edited")
    if before.get("eval_sets") != now["eval_sets"]:
        told.append("other --eval-data sets")
    if before["split"] != now["split"]:
        moved = [s for s in ("val", "test") if before["split"].get(s) != now["split"][s]]
        if before["split"].get("train") != now["split"]["train"]:
            moved.append("training sample")
        told.append(f"other {', '.join(moved)} images")
    raise DataChanged(f"cannot resume: the data changed since the earlier attempt ({'; '.join(told)}; recorded in "
                        f"{where}); its seeds trained on the old data: start again with a new --run-id")

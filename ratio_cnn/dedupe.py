"""Near-duplicate images: the same photograph re-encoded, recoloured or re-cropped, or the same
lesion photographed again, grouped so that a split can keep each group on one side.

Whole-image similarity is not enough on dermoscopy: any two small round lesions on plain
skin under the same dermoscope look alike as thumbnails. So, in two stages:

1. Candidates. Each image becomes a 16x16 thumbnail, standardised per colour channel (a
   recoloured copy gives the same numbers); one matrix product scores every pair, and each
   image keeps its `CANDIDATES` best-scoring partners.
2. Verification, on 64x64 images band-passed (`BAND`: shading, lighting and the JPEG block
   grid removed, lesion structure kept), with the dark or glaring rim of the dermoscope's
   field of view masked out. The second image is aligned to the first (`ROTATIONS` x
   `SCALES`, each with the best shift found by one FFT correlation) and both are cut into
   8x8 blocks; each block's normalised correlation is taken at its best shift of at most
   `LOCAL_SHIFT` pixel (a re-photographed lesion is not rigidly the same). Each block counts
   the same however faint its texture (correlation is scale-free), but only where both
   images have structure in two directions (`MIN_CORNER`): a lone edge matches any edge,
   which is how two round lesions fool a plain correlation. The pair's score is the sum of
   those blocks' correlations over (their count + `PRIOR_BLOCKS`), so a few lucky blocks
   cannot make a pair.

Pairs scoring at least `THRESHOLD` are near-duplicates; groups are their connected components
(A~B and B~C put A, B and C in one group). A group is named after its first image name in
sorted order, so group names stay put when images are added to a dataset (unless a new image
joins a group ahead of its first name). Calibration, the
counts on the shared ISIC data and the limits: docs/near-duplicates.md.

`ratio-cnn data dedupe URI [--out OUT]` (`dedupe_dataset`) writes the sidecar
`near_duplicates.csv` (image,near_dup_group) and `near_duplicate_pairs.csv` (image,twin,score)
to OUT, by default the dataset itself; `attach_groups` joins the sidecar onto a manifest.
"""
import contextlib
import io
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from ratio_cnn.data import MANIFEST, UndecodableImage, decode_images, read_manifest
from ratio_cnn.errors import RatioCnnError
from ratio_cnn.model import IMAGE_SIZE
from ratio_cnn.storage import open_storage

log = logging.getLogger(__name__)

SIDECAR = "near_duplicates.csv"
PAIRS = "near_duplicate_pairs.csv"
GROUP_COLUMN = "near_dup_group"

THUMB = 16  # candidate search: coarse enough that a few pixels of shift barely change a thumbnail
CANDIDATES = 12  # partners kept per image: on ISIC, 16 accepted 2 pairs more (144), at 4/3 of the time
SIZE = 64  # verification resolution: lesion structure survives, 4x fewer pixels than 128
BAND = (0.7, 2.5)  # difference-of-Gaussians sigmas at SIZE px: below 0.7 is JPEG grid and noise
ALIGN_SIZE = 32  # the alignment search runs on 2x2-pooled verification images
ROTATIONS = (-12.0, -6.0, 0.0, 6.0, 12.0)  # degrees: a lesion photographed again is rarely turned more
SCALES = (0.87, 0.93, 1.0, 1.07, 1.15)  # zoom of the second image: re-crops and another dermoscope distance
MAX_SHIFT = 4  # pixels at ALIGN_SIZE (16 at 128): further than ISIC pairs ever moved
REFINED = 2  # rotation-and-scale choices of the coarse search tried again at ALIGN_SIZE
BLOCK = 8  # pixels at SIZE: 64 blocks per image
LOCAL_SHIFT = 1  # pixel at SIZE each block may move on its own
FIELD_DARK = 0.5  # the rim: darker than this share of the image median, in a corner,
RIM_CLEAR = 0.2  # clear of the centre (this radius, a share of the side);
FIELD_GLARE = 245  # glare: brighter than this grey level, at the border
MIN_CORNER = 0.25  # smaller over larger structure-tensor eigenvalue: 0 is a lone edge, 1 texture
PRIOR_BLOCKS = 8  # blocks of zero correlation every score starts with
THRESHOLD = 0.41  # calibrated on the shared ISIC data by looking at pairs: docs/near-duplicates.md
PAIR_BATCH = 256  # pairs verified at once by one worker: ~80 MB of intermediate tensors
IMAGE_CHUNK = 512  # images prepared at once by one worker
MAX_WORKERS = 8  # batches verified side by side, at most


@dataclass
class NearDuplicates:
    groups: pd.DataFrame  # image, near_dup_group: one row per image, in the order given
    pairs: pd.DataFrame  # image, twin, score: every candidate pair at or above the threshold


# -----------------------------------------------------------------------------
# the pure part: decoded images -> pairs -> groups


def find_near_duplicates(images: np.ndarray, names: list[str], threshold: float = THRESHOLD) -> NearDuplicates:
    """(N, 128, 128, 3) uint8 images and their names -> near-duplicate pairs and a group per image."""
    assert images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3) and len(images) == len(names)
    scored = score_candidates(images)
    accepted = scored[scored["score"] >= threshold]
    pairs = pd.DataFrame({"image": [names[i] for i in accepted["i"]], "twin": [names[j] for j in accepted["j"]],
                          "score": accepted["score"].round(4).to_numpy()})
    groups = pd.DataFrame({"image": names, GROUP_COLUMN: group_names(names, accepted[["i", "j"]].to_numpy())})
    return NearDuplicates(groups, pairs.sort_values("score", ascending=False, ignore_index=True))


def group_names(names: list[str], pairs: np.ndarray) -> list[str]:
    """Union-find over index pairs: each image's group, named after the group's first name in sorted order."""
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(int(i)), root(int(j))
        if a != b:  # the root keeps the smaller name, so it names the group
            parent[max(a, b, key=lambda k: names[k])] = min(a, b, key=lambda k: names[k])
    return [names[root(i)] for i in range(len(names))]


def score_candidates(images: np.ndarray) -> pd.DataFrame:
    """Every candidate pair (i < j) of (N, 128, 128, 3) uint8 images with its verification score, highest first."""
    if len(images) < 2:
        return pd.DataFrame({"i": [], "j": [], "score": []}).astype({"i": int, "j": int})
    with one_torch_thread(), ThreadPoolExecutor(min(os.cpu_count() or 1, MAX_WORKERS)) as pool:
        chunks = [images[start : start + IMAGE_CHUNK] for start in range(0, len(images), IMAGE_CHUNK)]
        prepared = Prepared.concat(list(pool.map(prepare, chunks)))
        pairs = candidate_pairs(prepared.thumbs, pool)
        pairs = pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]  # by second image: a batch turns each of them once
        batches = [torch.from_numpy(pairs[start : start + PAIR_BATCH]).T for start in range(0, len(pairs), PAIR_BATCH)]
        scores = list(tqdm(pool.map(lambda ij: verify(*ij, prepared), batches), total=len(batches),
                           desc="near-duplicates", unit="batch", leave=False, disable=None))
    score = torch.cat(scores).numpy()
    table = pd.DataFrame({"i": pairs[:, 0], "j": pairs[:, 1], "score": score})
    return table.sort_values("score", ascending=False, ignore_index=True)


@contextlib.contextmanager
def one_torch_thread():
    """Torch ops on one thread each while the pool runs batches side by side: on tensors this small,
    OpenMP's hand-offs cost more than they give, and on cores other jobs share they cost 3x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -----------------------------------------------------------------------------
# stage 1: candidates


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance per image and channel: recolouring and exposure drop out."""
    x = x - x.mean((-2, -1), keepdim=True)
    return x / x.std((-2, -1), keepdim=True).clamp(min=1e-6)


def candidate_pairs(thumbs: torch.Tensor, pool: ThreadPoolExecutor) -> np.ndarray:
    """(P, 2) index pairs i < j: each image with the CANDIDATES others whose (N, D) unit-norm
    thumbnails correlate best with its own."""
    n = len(thumbs)
    k = min(CANDIDATES, n - 1)
    if k < 1:
        return np.zeros((0, 2), dtype=np.int64)

    def best_of(start: int) -> torch.Tensor:  # a block of rows at a time: memory grows with N, not N^2
        similarity = thumbs[start : start + IMAGE_CHUNK] @ thumbs.T
        rows = torch.arange(start, min(start + IMAGE_CHUNK, n))
        similarity[rows - start, rows] = -2.0  # not oneself
        return torch.stack([rows.repeat_interleave(k), similarity.topk(k, dim=1).indices.flatten()], 1)

    found = torch.cat(list(pool.map(best_of, range(0, n, IMAGE_CHUNK))))
    return np.unique(torch.sort(found, dim=1).values.numpy(), axis=0)


# -----------------------------------------------------------------------------
# stage 2: verification


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).repeat(x.shape[1], 1, 1, 1)  # (C, 1, 1, taps)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.transpose(2, 3), groups=x.shape[1])


def band_pass(x: torch.Tensor) -> torch.Tensor:
    return gaussian_blur(x, BAND[0]) - gaussian_blur(x, BAND[1])


def field_rim(luminance: np.ndarray) -> np.ndarray:
    """(N, H, W) -> bool: the dermoscope's rim and lamp glare. Glare is near-white and touches the
    border; the rim is very dark, takes in a corner of the image and keeps out of its centre (a dark
    lesion that reaches the border does not)."""
    size = luminance.shape[1]
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    centre = np.hypot(yy, xx) < RIM_CLEAR * size
    border, corners = np.ones((size, size), dtype=bool), np.zeros((size, size), dtype=bool)
    border[1:-1, 1:-1] = False
    for y in (slice(0, 3), slice(-3, None)):
        for x in (slice(0, 3), slice(-3, None)):
            corners[y, x] = True
    rim = np.zeros(luminance.shape, dtype=bool)
    for k, lum in enumerate(luminance):
        dark, dark_count = ndimage.label(lum < FIELD_DARK * np.median(lum))
        glare, glare_count = ndimage.label(lum > FIELD_GLARE)
        if dark_count:
            rims = np.setdiff1d(np.unique(dark[corners]), np.unique(dark[centre]))
            rim[k] |= np.isin(dark, rims[rims > 0])
        if glare_count:
            touching = np.unique(glare[border])
            rim[k] |= np.isin(glare, touching[touching > 0])
    return rim


@dataclass
class Prepared:
    """Every image as the two stages compare it, at SIZE unless said otherwise."""
    thumbs: torch.Tensor  # (N, 3 * THUMB^2) standardised thumbnails of unit norm: the candidate search's
    band: torch.Tensor  # (N, 3, S, S) band-passed channels, RMS 1 inside the field, 0 near its rim
    rim_free: torch.Tensor  # (N, 1, S, S) 1 where no rim is near
    small: torch.Tensor  # (N, 1, A, A) the band, channels summed, pooled to ALIGN_SIZE: what alignment sees

    @staticmethod
    def concat(parts: list["Prepared"]) -> "Prepared":
        return Prepared(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Prepared)))


def prepare(images: np.ndarray) -> Prepared:
    """(N, 128, 128, 3) uint8 -> what both stages compare."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    thumbs = standardise(F.adaptive_avg_pool2d(pixels, THUMB)).flatten(1)
    small = F.avg_pool2d(pixels, IMAGE_SIZE // SIZE)
    rim = torch.from_numpy(field_rim(small.mean(1).numpy())).float()[:, None]
    reach = math.ceil(2 * BAND[1])  # the band-pass smears the rim's edge this far
    rim_free = 1 - F.max_pool2d(rim, 2 * reach + 1, stride=1, padding=reach)
    band = band_pass(standardise(small)) * rim_free
    inside = rim_free.sum((-2, -1), keepdim=True).clamp(min=1)
    band = band / (band.pow(2).sum((-2, -1), keepdim=True) / inside).sqrt().clamp(min=1e-6)
    return Prepared(thumbs / thumbs.norm(dim=1, keepdim=True).clamp(min=1e-6), band, rim_free,
                    F.avg_pool2d(band.sum(1, keepdim=True), SIZE // ALIGN_SIZE))


def transform_grid(angle: torch.Tensor, scale: torch.Tensor, n: int, dy: torch.Tensor | None = None,
                   dx: torch.Tensor | None = None) -> torch.Tensor:
    """Sampling grids (B, n, n, 2): rotate by `angle` (radians) and zoom by `scale` about the centre,
    then shift by (dy, dx) pixels."""
    dy = torch.zeros_like(angle) if dy is None else dy
    dx = torch.zeros_like(angle) if dx is None else dx
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    tx, ty = 2 * dx / n, 2 * dy / n  # pixels -> normalised coordinates
    theta = torch.stack([torch.stack([cos, -sin, -(cos * tx - sin * ty)], 1),
                         torch.stack([sin, cos, -(sin * tx + cos * ty)], 1)], 1)
    return F.affine_grid(theta, [len(angle), 1, n, n], align_corners=False)


def padded_spectrum(first: torch.Tensor, reach: int) -> torch.Tensor:
    """What `shift_search` needs of the first images (B, n, n): placed `reach` pixels in, on a canvas
    that leaves room for +-reach without wrap-around, so a shift d correlates at [d + reach]."""
    size = first.shape[-1] + 2 * reach
    return torch.fft.rfft2(F.pad(first, (reach, 0, reach, 0)), s=(size, size))


def shift_search(first_spectrum: torch.Tensor, second: torch.Tensor, reach: int) -> tuple[torch.Tensor, ...]:
    """Per pair: the shift (dy, dx) of `second` (B, n, n), within +-reach, that correlates best with the
    first image, by one FFT correlation, and that correlation over the norm of `second`."""
    size = second.shape[-1] + 2 * reach
    correlation = torch.fft.irfft2(first_spectrum * torch.fft.rfft2(second, s=(size, size)).conj(), s=(size, size))
    value, where = correlation[:, : 2 * reach + 1, : 2 * reach + 1].flatten(1).max(1)
    value = value / second.flatten(1).norm(dim=1).clamp(min=1e-6)  # a zoomed-out image has less to match
    return value, (where // (2 * reach + 1) - reach).float(), (where % (2 * reach + 1) - reach).float()


def align(i: torch.Tensor, j: torch.Tensor, small: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per pair (i[k], j[k]): the rotation, scale and shift (at SIZE) of image j that correlates best
    with image i. Every rotation and scale is tried on `small` (N, 1, A, A) pooled once more; the
    `REFINED` best are tried again at A, shifts included."""
    coarse, reach = F.avg_pool2d(small, 2)[:, 0], MAX_SHIFT // 2
    first_spectrum = padded_spectrum(coarse[i], reach)
    second, second_at = torch.unique(j, return_inverse=True)  # each second image is turned once
    angles, scales = torch.cartesian_prod(torch.tensor(ROTATIONS) * math.pi / 180, torch.tensor(SCALES)).T
    values = []
    for grid in transform_grid(angles, scales, ALIGN_SIZE // 2):
        turned = F.grid_sample(coarse[second, None], grid.expand(len(second), -1, -1, -1), mode="bilinear",
                               padding_mode="zeros", align_corners=False)[:, 0]
        values.append(shift_search(first_spectrum, turned[second_at], reach)[0])
    first_spectrum = padded_spectrum(small[i, 0], MAX_SHIFT)
    best = None
    for transform in torch.stack(values).topk(REFINED, dim=0).indices:
        angle, scale = angles[transform], scales[transform]
        turned = F.grid_sample(small[j], transform_grid(angle, scale, ALIGN_SIZE), mode="bilinear",
                               padding_mode="zeros", align_corners=False)[:, 0]
        found = (*shift_search(first_spectrum, turned, MAX_SHIFT), angle, scale)
        best = found if best is None else tuple(torch.where(found[0] > best[0], new, old)
                                                for new, old in zip(found, best))
    _, dy, dx, angle, scale = best
    factor = SIZE / ALIGN_SIZE
    return angle, scale, dy * factor, dx * factor


def block_sum(x: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) -> (B, S/BLOCK * S/BLOCK): sums over channels and each block."""
    return F.avg_pool2d(x, BLOCK).sum(1).flatten(1) * BLOCK * BLOCK  # pooled first: 64x less to add up


def block_min(x: torch.Tensor) -> torch.Tensor:
    return -F.max_pool2d(-x, BLOCK).flatten(1)


def corner_ratio(x: torch.Tensor) -> torch.Tensor:
    """Per block, smaller over larger eigenvalue of the gradient structure tensor (channels summed)."""
    lum = x.sum(1, keepdim=True)
    gx = F.pad(lum[..., :, 1:] - lum[..., :, :-1], (0, 1))
    gy = F.pad(lum[..., 1:, :] - lum[..., :-1, :], (0, 0, 0, 1))
    xx, yy, xy = block_sum(gx * gx), block_sum(gy * gy), block_sum(gx * gy)
    half_trace = (xx + yy) / 2
    spread = (half_trace**2 - (xx * yy - xy**2)).clamp(min=0).sqrt()
    return (half_trace - spread) / (half_trace + spread).clamp(min=1e-9)


def verify(i: torch.Tensor, j: torch.Tensor, images: Prepared) -> torch.Tensor:
    """The scores of image pairs (i[k], j[k]): image j aligned to image i, then compared block by block."""
    angle, scale, dy, dx = align(i, j, images.small)
    grid = transform_grid(angle, scale, SIZE, dy=dy, dx=dx)
    a, a_free = images.band[i], images.rim_free[i]  # (B, 3, S, S), (B, 1, S, S)
    b, b_free = (F.grid_sample(x[j], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
                 for x in (images.band, images.rim_free))

    values = 3 * BLOCK * BLOCK  # per block, all channels
    a_centred = a - F.interpolate(F.avg_pool2d(a.mean(1, keepdim=True), BLOCK), scale_factor=BLOCK, mode="nearest")
    a_norm = block_sum(a_centred**2).sqrt()  # (B, blocks)
    # b's sums and sums of squares at every block position: its norms at each local shift.
    r = LOCAL_SHIFT
    b_pad = F.pad(b, (r, r, r, r))
    b_sums = F.avg_pool2d(b_pad.sum(1, keepdim=True), BLOCK, stride=1) * BLOCK * BLOCK
    b_squares = F.avg_pool2d(b_pad.pow(2).sum(1, keepdim=True), BLOCK, stride=1) * BLOCK * BLOCK
    correlation = torch.full_like(a_norm, -1.0)
    for u in range(2 * r + 1):
        for v in range(2 * r + 1):
            at = (slice(None), 0, slice(u, u + SIZE, BLOCK), slice(v, v + SIZE, BLOCK))
            b_norm = (b_squares[at] - b_sums[at] ** 2 / values).clamp(min=0).sqrt().flatten(1)
            # a is zero-mean in each block, so b needs no centring in the product
            ncc = block_sum(a_centred * b_pad[..., u : u + SIZE, v : v + SIZE]) / (a_norm * b_norm).clamp(min=1e-6)
            correlation = torch.maximum(correlation, ncc)

    inside = (block_min(a_free) > 0.99) & (block_min(b_free) > 0.99)  # no rim, nothing warped in from outside
    usable = inside & (torch.minimum(corner_ratio(a), corner_ratio(b)) > MIN_CORNER)
    return (correlation * usable).sum(1) / (usable.sum(1) + PRIOR_BLOCKS)


# -----------------------------------------------------------------------------
# datasets: read one, write the sidecar; join the sidecar onto a manifest


def dedupe_dataset(uri: str, out: str | None = None, threshold: float = THRESHOLD, workers: int = 16) -> dict:
    """Find the near-duplicates of the dataset at `uri`; write SIDECAR and PAIRS to `out` (default: `uri`)."""
    started = time.monotonic()
    source = open_storage(uri)
    manifest = read_manifest(source.get(MANIFEST), source.describe(MANIFEST))
    names = manifest["image"].tolist()
    raw = source.get_many(names, workers=workers)
    decoded = decode_images([raw.pop(n) for n in names], [source.describe(n) for n in names])
    undecodable = [n for n, d in zip(names, decoded) if isinstance(d, UndecodableImage)]
    for name in undecodable:  # compared with nothing: each stays a group of its own
        log.warning("%s does not decode: it gets a group of its own", source.describe(name))
    kept = [k for k, d in enumerate(decoded) if not isinstance(d, UndecodableImage)]
    images = np.empty((len(kept), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for row, k in enumerate(kept):
        images[row], decoded[k] = decoded[k], None  # each decoder array freed once copied: the images are held once
    found = find_near_duplicates(images, [names[k] for k in kept], threshold)
    groups = pd.concat([found.groups, pd.DataFrame({"image": undecodable, GROUP_COLUMN: undecodable})])
    groups = groups.set_index("image").loc[names].reset_index()  # the manifest's order

    target = open_storage(out) if out else source
    target.put(PAIRS, found.pairs.to_csv(index=False).encode())
    target.put(SIDECAR, groups.to_csv(index=False).encode())
    sizes = groups[GROUP_COLUMN].value_counts()
    summary = {"images": len(names), "pairs": len(found.pairs), "groups": int((sizes > 1).sum()),
               "images_in_groups": int(sizes[sizes > 1].sum()), "largest_group": int(sizes.max()),
               "undecodable": undecodable, "threshold": threshold, "seconds": round(time.monotonic() - started, 1),
               "sidecar": target.describe(SIDECAR)}
    log.info("%d near-duplicate pairs in %d groups (%d of %d images) in %.0f s: %s", summary["pairs"],
             summary["groups"], summary["images_in_groups"], len(names), summary["seconds"], summary["sidecar"])
    return summary


def attach_groups(manifest: pd.DataFrame, sidecar: bytes, where: str = SIDECAR) -> pd.DataFrame:
    """The manifest with a `near_dup_group` column from the sidecar, joined on `image`.

    Sidecar rows for images the manifest no longer lists are ignored: removing an image never
    splits the groups of the others wrongly, only keeps them together."""
    try:
        groups = pd.read_csv(io.BytesIO(sidecar), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise RatioCnnError(f"cannot read {where} as CSV ({' '.join(str(e).split())}): write it again with "
                            "`ratio-cnn data dedupe`") from None
    if not {"image", GROUP_COLUMN} <= set(groups.columns):
        raise RatioCnnError(f"{where} has columns {', '.join(groups.columns)}, not image,{GROUP_COLUMN}: write it "
                            "again with `ratio-cnn data dedupe`")
    if GROUP_COLUMN in manifest.columns:
        raise RatioCnnError(f"the manifest already has a {GROUP_COLUMN} column and {where} gives another: "
                            "drop one of them")
    group_of = dict(zip(groups["image"], groups[GROUP_COLUMN]))
    missing = [name for name in manifest["image"] if name not in group_of]
    if missing:
        raise RatioCnnError(f"{where} has no group for {missing[0]} ({len(missing)} of the manifest's "
                            f"{len(manifest)} images lack one): images were added since it was written; run "
                            "`ratio-cnn data dedupe` again")
    return manifest.assign(**{GROUP_COLUMN: manifest["image"].map(group_of)})

"""Image data for proxy training: decoded once into uint8 tensors, augmented on the device.

The bundled default is Imagenette-64 (10 ImageNet classes, 64x64 JPEGs, see data/SOURCES.md;
ImageNet's terms of access apply: non-commercial research and education). Any ImageFolder tree
with train/ and val/ works too. Each (tree, classes, cap, resolution) is decoded and resized once:
kept in memory, and when large also written as .npy files to the cache folder, so that later
processes (one per trial) memory-map them instead of decoding again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.datasets import folder as tv_folder
from torchvision.transforms import functional as TF

from searchspace.errors import UserError

from . import checksum

log = logging.getLogger("trainers")

BUNDLED = Path(__file__).with_name("data") / "imagenette-64.tar.gz"
CACHE_VERSION = 1  # bump when the cached layout or the resize policy changes
DISK_CACHE_MIN_BYTES = 16 << 20  # smaller sets are cheap to decode again, keep them in memory only
MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, in [0, 1]
STD = (0.229, 0.224, 0.225)


def cache_dir() -> Path:
    return Path(os.environ.get("PLUGIN_EXPLORER_CACHE") or Path.home() / ".cache" / "plugin-explorer")


@dataclass(frozen=True)
class DataSpec:
    """Which images: `root` holds train/<class>/* and val/<class>/* (None = bundled Imagenette-64).

    Classes are the folders of train/ in sorted order, or the ids listed in `classes_file` (one per
    line, '#' comments); `num_classes` then keeps the first K. `max_per_class` caps the training
    images of each class (the first ones in sorted file order), `max_val_per_class` the val ones.
    """

    root: str | None = None
    num_classes: int | None = None
    classes_file: str | None = None
    max_per_class: int | None = None
    max_val_per_class: int | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> DataSpec:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise UserError(
                f"data: unknown keys {sorted(unknown)} (allowed: {sorted(cls.__dataclass_fields__)})"
            )
        return cls(**d)


@dataclass
class ImageData:
    """Decoded images: x uint8 [N, 3, R, R] (CPU), y int64 [N]; `skipped` lists (path, reason)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    root: str = ""

    @property
    def resolution(self) -> int:
        return self.train_x.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def at(self, resolution: int) -> ImageData:
        """The same images at another resolution (resized from the cached ones, no re-decode)."""
        if resolution == self.resolution:
            return self
        return replace(
            self, train_x=_resize_u8(self.train_x, resolution), val_x=_resize_u8(self.val_x, resolution)
        )


_MEMO: dict[str, ImageData] = {}  # in-process cache: several trials in one process decode once
_MEMO_MAX = 4


def load_data(spec: DataSpec | None = None, resolution: int = 64) -> ImageData:
    """Decode (or fetch from the cache) the images of `spec`, resized to `resolution` x `resolution`."""
    spec = spec or DataSpec()
    if not isinstance(resolution, int) or resolution < 8:
        raise UserError(f"resolution: expected an integer >= 8, got {resolution!r}")
    for name in ("num_classes", "max_per_class", "max_val_per_class"):
        v = getattr(spec, name)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise UserError(f"data.{name}: expected a positive integer or none, got {v!r}")
    root = Path(spec.root).expanduser() if spec.root else bundled_root()
    splits = {s: root / s for s in ("train", "val")}
    if not root.is_dir():
        raise UserError(f"data root {str(root)!r}: no such folder")
    for s, p in splits.items():
        if not p.is_dir():
            raise UserError(f"data root {str(root)!r}: no {s}/ folder (expected {s}/<class>/<image>)")
    classes = _pick_classes(spec, splits["train"])
    files = {
        s: _list(p, classes, cap)
        for (s, p), cap in zip(splits.items(), (spec.max_per_class, spec.max_val_per_class))
    }

    key_src = {
        "v": CACHE_VERSION,
        "root": str(root.resolve()),
        "classes": classes,
        "resolution": resolution,
        "files": hashlib.sha1(repr(files).encode()).hexdigest(),
    }  # paths + sizes + mtimes
    key = hashlib.sha1(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
    if key in _MEMO:
        return _MEMO[key]
    data = _read_disk_cache(key) or _decode(root, classes, files, resolution)
    if data.skipped:  # reported, not fatal: one bad file should not cost a whole study
        reasons = Counter(why.split(":")[0] for _, why in data.skipped)
        log.warning(
            "data %s: skipped %d files (%s); see ImageData.skipped",
            root,
            len(data.skipped),
            ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())),
        )
    if data.train_x.numel() + data.val_x.numel() >= DISK_CACHE_MIN_BYTES:
        _write_disk_cache(key, data, key_src)
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[key] = data
    return data


def bundled_root() -> Path:
    """Extract the bundled tarball once (checksum first; temp dir then rename, safe with many processes)."""
    dest = cache_dir() / f"imagenette-64-{checksum.expected(BUNDLED)[:12]}"
    if (dest / "imagenette-64").is_dir():
        return dest / "imagenette-64"
    checksum.check(BUNDLED, f"{BUNDLED} (the bundled data)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        with tarfile.open(BUNDLED) as tar:
            tar.extractall(tmp, filter="data")
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished first: use theirs
            if not (dest / "imagenette-64").is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / "imagenette-64"


def _pick_classes(spec: DataSpec, train: Path) -> list[str]:
    present, _ = tv_folder.find_classes(train) if any(p.is_dir() for p in train.iterdir()) else ([], {})
    if not present:
        raise UserError(f"{train}: no class folders (expected {train}/<class>/<image>)")
    classes = present
    if spec.classes_file:
        try:
            lines = Path(spec.classes_file).expanduser().read_text().splitlines()
        except OSError as e:
            raise UserError(f"classes file {spec.classes_file!r}: {e.strerror or e}") from None
        classes = [s.split()[0] for s in (line.split("#")[0].strip() for line in lines) if s]
        missing = [c for c in classes if c not in present]
        if missing:
            raise UserError(
                f"classes file {spec.classes_file!r}: {len(missing)} ids not in {train}, e.g. {missing[:3]}"
            )
        if len(set(classes)) != len(classes) or not classes:
            raise UserError(f"classes file {spec.classes_file!r}: empty or lists a class twice")
    if spec.num_classes is not None:
        if spec.num_classes > len(classes):
            raise UserError(
                f"num_classes={spec.num_classes}: only {len(classes)} classes available in {train}"
            )
        classes = classes[: spec.num_classes]
    return classes


def _list(split: Path, classes: list[str], cap: int | None) -> list[tuple[str, int, int, int]]:
    """(path, label, size, mtime) of every file of the chosen classes, sorted; any file counts here,
    non-images are skipped (and counted) when decoding."""
    for c in classes:
        if not (split / c).is_dir():
            raise UserError(f"{split}: class folder {c!r} is missing (it exists in train/)")
    samples = tv_folder.make_dataset(
        split,
        {c: i for i, c in enumerate(classes)},
        is_valid_file=lambda p: not os.path.basename(p).startswith("."),
        allow_empty=True,
    )
    out, per_class = [], [0] * len(classes)
    for path, label in sorted(samples, key=lambda s: (s[1], s[0])):
        if cap is None or per_class[label] < cap:
            st = os.stat(path)
            out.append((path, label, st.st_size, st.st_mtime_ns))
            per_class[label] += 1
    empty = [c for c, n in zip(classes, per_class) if n == 0]
    if empty:
        raise UserError(
            f"{split}: empty class folder(s) {empty[:5]} (every class needs images in train/ and val/)"
        )
    return out


def _load_one(path: str, resolution: int) -> np.ndarray | str:
    """HWC uint8 at resolution x resolution (shorter side resized, centre crop), or a skip reason."""
    if not path.lower().endswith(tv_folder.IMG_EXTENSIONS):
        return "not an image: unknown extension"
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (resolution, resolution):
                im = TF.center_crop(
                    TF.resize(im, resolution, interpolation=TF.InterpolationMode.BICUBIC), resolution
                )
            return np.asarray(im)
    except Exception as e:  # corrupt, truncated, or not an image despite its name
        return f"unreadable: {type(e).__name__}: {e}"


def _decode(root: Path, classes: list[str], files: dict, resolution: int) -> ImageData:
    out, skipped = {}, []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        for split, lst in files.items():
            x = np.empty((len(lst), 3, resolution, resolution), np.uint8)
            y, n = np.empty(len(lst), np.int64), 0
            for (path, label, *_), img in zip(
                lst, pool.map(lambda f: _load_one(f[0], resolution), lst, chunksize=64)
            ):
                if isinstance(img, str):
                    skipped.append((path, img))
                    continue
                x[n], y[n] = img.transpose(2, 0, 1), label
                n += 1
            counts = np.bincount(y[:n], minlength=len(classes))
            if (counts == 0).any():
                bad = [c for c, k in zip(classes, counts) if k == 0]
                raise UserError(f"{root / split}: no readable image in class folder(s) {bad[:5]}")
            out[split] = torch.from_numpy(x[:n].copy() if n < len(lst) else x), torch.from_numpy(y[:n].copy())
    return ImageData(*out["train"], *out["val"], classes=list(classes), skipped=skipped, root=str(root))


def _read_disk_cache(key: str) -> ImageData | None:
    d = cache_dir() / "tensors" / key
    try:
        meta = json.loads((d / "meta.json").read_text())
        # copy-on-write memory map: pages load lazily, and torch gets a writable array
        t = {
            n: torch.from_numpy(np.load(d / f"{n}.npy", mmap_mode="c"))
            for n in ("train_x", "train_y", "val_x", "val_y")
        }
    except (OSError, ValueError):
        return None
    return ImageData(
        **t, classes=meta["classes"], skipped=[tuple(s) for s in meta["skipped"]], root=meta["root"]
    )


def _write_disk_cache(key: str, data: ImageData, key_src: dict) -> None:
    d = cache_dir() / "tensors" / key
    if d.is_dir():
        return
    tmp = None
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".write-", dir=d.parent))
        for n in ("train_x", "train_y", "val_x", "val_y"):
            np.save(tmp / f"{n}.npy", getattr(data, n).numpy())
        meta = {**key_src, "classes": data.classes, "skipped": data.skipped, "root": data.root}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.rename(tmp, d)
    except (
        OSError
    ) as e:  # another process wrote it first, or a read-only / full cache folder: only speed is lost
        if not d.is_dir():
            log.warning("could not write the tensor cache %s: %s", d, e)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _resize_u8(x: torch.Tensor, r: int, chunk: int = 1024) -> torch.Tensor:
    out = torch.empty((x.shape[0], 3, r, r), dtype=torch.uint8, device=x.device)
    for i in range(0, x.shape[0], chunk):
        y = F.interpolate(
            x[i : i + chunk].float(), size=(r, r), mode="bilinear", antialias=True, align_corners=False
        )
        out[i : i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


# --- on-device batch augmentation (whole batches, no per-image Python) -------------------------


def pad_reflect(x: torch.Tensor, pad: int, chunk: int = 4096) -> torch.Tensor:
    """Reflect-pad a uint8 set once (per training run), so that batches only need a crop."""
    out = torch.empty(
        (*x.shape[:2], x.shape[2] + 2 * pad, x.shape[3] + 2 * pad), dtype=x.dtype, device=x.device
    )
    for i in range(0, x.shape[0], chunk):  # reflect padding wants floats; chunks bound the memory
        out[i : i + chunk] = F.pad(x[i : i + chunk].float(), (pad,) * 4, mode="reflect").to(x.dtype)
    return out


def crop_flip(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, r: int, pad: int = 0
) -> torch.Tensor:
    """Crop r x r at offsets (dy, dx) from a batch [B, C, H, W], flipping where `flip`.

    With `pad` > 0 the offsets count in a frame reflect-padded by `pad` on every side, and the
    padding is read through reflected indices: the same pixels as `pad_reflect` followed by the
    crop, without a padded copy of the data set. Two gathers with per-image index grids: no
    per-image Python, works on any device and dtype.
    """
    b, c, h, w = x.shape
    ar = torch.arange(r, device=x.device)
    rows = _reflect(dy[:, None] + ar - pad, h)
    cols = _reflect(dx[:, None] + torch.where(flip[:, None], ar.flip(0), ar) - pad, w)
    x = x.gather(2, rows[:, None, :, None].expand(b, c, r, w))
    return x.gather(3, cols[:, None, None, :].expand(b, c, r, r))


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Index i in [-(n-1), 2n-2] -> the pixel F.pad(mode="reflect") puts there (edge not repeated)."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def resized_crop_flip(x: torch.Tensor, params: torch.Tensor, out: int) -> torch.Tensor:
    """Random-resized crop + flip of a float batch via one affine grid_sample.

    params [B, 4] = (scale_x, scale_y, shift_x, shift_y) in normalised coordinates, scale_x < 0 flips.
    """
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = params.to(x.dtype).unbind(1)
    grid = F.affine_grid(theta, [b, x.shape[1], out, out], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def rrc_params(n: int, gen: torch.Generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-image (sx, sy, tx, ty) for `resized_crop_flip`: area fraction in `scale`, aspect in `ratio`."""
    area = torch.empty(n).uniform_(*scale, generator=gen)
    logr = torch.empty(n).uniform_(np.log(ratio[0]), np.log(ratio[1]), generator=gen)
    sx = (area * logr.exp()).sqrt().clamp(max=1.0)
    sy = (area / logr.exp()).sqrt().clamp(max=1.0)
    tx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sx)
    ty = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sy)
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.stack([torch.where(flip, -sx, sx), sy, tx, ty], 1)


def norm_constants(device, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [1, 3, 1, 1] for uint8 pixels, on `device`: make them once per run and pass them to
    `normalize` (built per batch they would be two blocking host-to-device copies every CUDA step)."""
    mean = torch.tensor(MEAN, dtype=dtype).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, dtype=dtype).view(1, 3, 1, 1) * 255
    return mean.to(device), std.to(device)


def normalize(
    x: torch.Tensor, dtype: torch.dtype, constants: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """uint8 [B, 3, R, R] -> normalised `dtype` (on x's device); `constants` from `norm_constants`."""
    mean, std = constants if constants is not None else norm_constants(x.device, dtype)
    return x.to(dtype).sub_(mean).div_(std)  # in place: one new tensor per batch

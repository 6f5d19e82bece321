"""Reading remote-sensing images as 8-bit RGB, and counting the ones that cannot be read.

Formats: anything Pillow decodes (.tif/.tiff/.jpg/.jpeg/.png among them).

Conversion rule to 8-bit RGB (documented, deterministic per image):

* 8-bit RGB: unchanged. Grey, palette, RGBA/LA (alpha dropped), CMYK, YCbCr: Pillow's
  ``convert("RGB")``.
* High bit depth (16-bit integer ``I;16*``, 32-bit ``I`` or float ``F``), one band:
  ``high_bit_depth="stretch"`` (default) stretches linearly between the 2nd and 98th
  percentile of the image to 0..255 and clips (what GIS viewers show for 11/12/16-bit
  sensor data, where dividing by 65535 would give a black image); ``"scale"`` maps
  0..65535 linearly (``value // 257``), exact for true 16-bit data; ``"reject"`` raises.
  The grey result is repeated over the three channels.
* More than three bands (e.g. an RGB+NIR TIFF): the bands listed in ``bands``
  (default the first three) become R, G, B.
* A TIFF Pillow cannot decode (typically a multi-band 16-bit GeoTIFF) is read with
  ``tifffile`` when that package is installed, then follows the rules above; otherwise
  it is rejected with a message saying how to convert it.

A missing or unreadable image is a :class:`~rslavis.common.errors.DataError`; the
datasets turn it into a skipped sample with a warning (or re-raise with ``strict``).
"""

import logging

import numpy as np

from rslavis.common.errors import DataError

logger = logging.getLogger(__name__)

HIGH_BIT_DEPTH_RULES = ("stretch", "scale", "reject")
IMAGE_EXTENSIONS = (".tif", ".tiff", ".jpg", ".jpeg", ".png")


def _stretch(arr, rule, path):
    """One band (H, W) of any numeric dtype to uint8 by ``rule``."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    if rule == "reject":
        raise DataError(
            f"image {path}: {arr.dtype} pixels are not 8-bit and high_bit_depth is 'reject'; "
            "convert it to 8-bit RGB or set build_info.high_bit_depth to 'stretch' or 'scale'."
        )
    a = arr.astype(np.float64)
    if rule == "scale":
        if np.issubdtype(arr.dtype, np.floating):
            lo, hi = 0.0, 1.0 if np.nanmax(a) <= 1.0 else 65535.0
        else:
            lo, hi = 0.0, 65535.0
    else:  # stretch
        finite = a[np.isfinite(a)]
        if finite.size == 0:
            return np.zeros(a.shape, np.uint8)
        lo, hi = np.percentile(finite, [2, 98])
        if hi <= lo:  # flat image: keep it flat instead of dividing by zero
            lo, hi = float(finite.min()), float(finite.min()) + 1.0
    out = (np.nan_to_num(a, nan=lo) - lo) / (hi - lo) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def array_to_rgb(arr, path="<array>", high_bit_depth="stretch", bands=(0, 1, 2)):
    """An (H, W), (H, W, C) or (C, H, W) array to an 8-bit RGB PIL image by the module's rule."""
    from PIL import Image

    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] < min(arr.shape[1:]) and arr.shape[0] <= 16 and arr.shape[-1] > 16:
        arr = np.moveaxis(arr, 0, -1)  # tifffile gives band-first planar data
    if arr.ndim == 2:
        grey = _stretch(arr, high_bit_depth, path)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    if arr.ndim != 3:
        raise DataError(f"image {path}: unsupported array shape {arr.shape}; expected (H, W) or (H, W, bands).")
    n = arr.shape[2]
    if n == 1:
        return array_to_rgb(arr[:, :, 0], path, high_bit_depth, bands)
    if n == 2:  # grey + alpha
        return array_to_rgb(arr[:, :, 0], path, high_bit_depth, bands)
    idx = list(bands)[:3]
    if len(idx) != 3 or max(idx) >= n or min(idx) < 0:
        raise DataError(f"image {path}: has {n} bands; build_info.bands {list(bands)} must name three of 0..{n - 1}.")
    chans = [_stretch(arr[:, :, b], high_bit_depth, path) for b in idx]
    return Image.fromarray(np.stack(chans, axis=2), "RGB")


def _pil_to_rgb(img, path, high_bit_depth, bands):
    mode = img.mode
    if mode in ("RGB", "L", "P", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    if mode in ("RGBA", "RGBX", "RGBa", "LA", "La", "PA"):
        return img.convert("RGB")  # alpha dropped
    if mode.startswith("I") or mode == "F":
        arr = np.array(img)
        return array_to_rgb(arr, path, high_bit_depth, bands)
    # Anything else Pillow opened (rare multi-band modes): go through numpy.
    return array_to_rgb(np.array(img), path, high_bit_depth, bands)


def load_image(path, high_bit_depth="stretch", bands=(0, 1, 2)):
    """Open ``path`` as an 8-bit RGB PIL image by the module's rule; DataError when it cannot."""
    from PIL import Image, UnidentifiedImageError

    if high_bit_depth not in HIGH_BIT_DEPTH_RULES:
        raise DataError(f"high_bit_depth {high_bit_depth!r} is not one of {', '.join(HIGH_BIT_DEPTH_RULES)}.")
    path = str(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and not in a worker later
            return _pil_to_rgb(img, path, high_bit_depth, bands)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        if path.lower().endswith((".tif", ".tiff")):
            arr = _read_tiff_fallback(path, exc)
            return array_to_rgb(arr, path, high_bit_depth, bands)
        raise DataError(f"cannot read image {path}: {exc}") from None
    except Exception as exc:  # any decoder failure is a bad file, not a crash
        raise DataError(f"cannot read image {path}: {exc}") from None


def _read_tiff_fallback(path, pil_exc):
    try:
        import tifffile
    except ImportError:
        raise DataError(
            f"cannot read image {path}: Pillow cannot decode this TIFF ({pil_exc}); it is probably a "
            "multi-band or high-bit-depth GeoTIFF. Install 'tifffile' (pip install tifffile) to read it, "
            "or convert it to 8-bit RGB (e.g. gdal_translate -ot Byte -scale -b 1 -b 2 -b 3 in.tif out.tif)."
        ) from None
    try:
        return tifffile.imread(path)
    except Exception as exc:
        raise DataError(f"cannot read image {path}: neither Pillow ({pil_exc}) nor tifffile ({exc}) can decode it.") from None


class SkipCounter:
    """How many images were skipped as missing or corrupt, shared with DataLoader workers.

    The count lives in a shared-memory tensor, one slot per process (the main process and
    each worker write their own slot, so no lock is needed), which reaches workers started
    by fork, spawn or forkserver alike; the main process that logs it sums the slots.
    ``files`` holds the last few skipped paths seen by this process.
    """

    MAX_FILES = 20
    SLOTS = 64

    def __init__(self):
        import torch

        self._counts = torch.zeros(self.SLOTS + 1, dtype=torch.int64).share_memory_()
        self.files = []

    def add(self, path):
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        self._counts[0 if info is None else 1 + info.id % self.SLOTS] += 1
        if len(self.files) < self.MAX_FILES:
            self.files.append(str(path))

    @property
    def value(self):
        return int(self._counts.sum())

    def reset(self):
        self._counts.zero_()
        self.files = []

    def __deepcopy__(self, memo):  # copies share the count
        return self


def skipped_images(dataset):
    """Images skipped so far in ``dataset`` (also through ConcatDataset/Subset wrappers)."""
    parts = getattr(dataset, "datasets", None)
    if parts is not None:
        return sum(skipped_images(d) for d in parts)
    inner = getattr(dataset, "dataset", None)
    if inner is not None and not hasattr(dataset, "skipped_images"):
        return skipped_images(inner)
    return int(getattr(dataset, "skipped_images", 0) or 0)

"""Image I/O: corrupt and missing images skipped and counted (or strict errors), 16-bit and multi-band TIFFs."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from rslavis.common.errors import DataError
from rslavis.datasets.datasets.caption_datasets import CaptionEvalDataset, CaptionTrainDataset
from rslavis.datasets.image_io import array_to_rgb, load_image, skipped_images
from rslavis.processors.image_processors import RSImageEvalProcessor


@pytest.fixture
def records(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[:200])  # truncated JPEG
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not an image at all")
    return [
        {"image_id": 0, "image": str(good), "captions": ["a", "b"]},
        {"image_id": 1, "image": str(corrupt), "captions": ["c", "d"]},
        {"image_id": 2, "image": str(garbage), "captions": ["e"]},
        {"image_id": 3, "image": str(tmp_path / "missing.png"), "captions": ["f"]},
    ]


def test_unreadable_images_skipped_with_warning_and_counted(records, caplog):
    ds = CaptionTrainDataset(records, RSImageEvalProcessor(image_size=32))
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]
    assert [it is None for it in items] == [False, False, True, True, True, True]
    assert ds.skipped_images == 4
    for name in ("corrupt.jpg", "garbage.tif", "missing.png"):
        assert name in caplog.text
    assert caplog.text.count("corrupt.jpg") == 1  # one warning per file, every sample counted
    batch = ds.collater(items)
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image_id"] == [0, 0]


def test_skip_counter_is_shared_with_dataloader_workers(records):
    ds = CaptionEvalDataset(records, RSImageEvalProcessor(image_size=32))
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=ds.collater)
    batches = list(loader)
    assert sum(len(b.get("image_id", [])) for b in batches) == 1
    assert ds.skipped_images == 3  # counted in the workers, visible here
    assert skipped_images(torch.utils.data.ConcatDataset([ds, ds])) == 6
    ds.skip_counter.reset()
    assert ds.skipped_images == 0


def test_strict_raises(records):
    ds = CaptionEvalDataset(records, strict=True)
    assert ds[0]["image"].size == (40, 40)
    with pytest.raises(DataError, match="corrupt.jpg.*strict"):
        ds[1]


def test_16bit_tiff_stretch_scale_reject(tmp_path):
    arr = np.zeros((20, 30), np.uint16)
    arr[:, 10:20] = 1000  # 12-bit-ish sensor values: dark if divided by 65535
    arr[:, 20:] = 4000
    path = tmp_path / "dem16.tif"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I;16")
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (30, 20)
    px = np.asarray(img)
    assert px[0, 0].tolist() == [0, 0, 0] and px[0, 25].tolist() == [255, 255, 255]
    assert 0 < px[0, 15, 0] < 255 and (px[..., 0] == px[..., 2]).all()
    scaled = np.asarray(load_image(path, high_bit_depth="scale"))
    assert scaled[0, 25, 0] == round(4000 / 65535 * 255)
    with pytest.raises(DataError, match="dem16.tif.*not 8-bit"):
        load_image(path, high_bit_depth="reject")
    # through the eval processor and a dataset
    ds = CaptionEvalDataset([{"image_id": 0, "image": str(path), "captions": ["x"]}], RSImageEvalProcessor(image_size=16))
    assert ds[0]["image"].shape == (3, 16, 16)


def test_float_and_multiband_rules(tmp_path):
    f = tmp_path / "float.tif"
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(f)
    assert np.asarray(load_image(f)).dtype == np.uint8
    rgba = tmp_path / "rgba.tif"
    Image.fromarray(np.full((8, 8, 4), [10, 20, 30, 0], np.uint8), "RGBA").save(rgba)
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [10, 20, 30]  # alpha dropped
    # a 4-band 16-bit array (e.g. read by tifffile): chosen bands as R, G, B, band-first accepted
    bands = np.stack([np.full((20, 20), v, np.uint16) for v in (100, 200, 300, 400)])
    bands[:, 0, 0] = 0
    bands[:, 1, 1] = 1000
    img = array_to_rgb(bands, "x.tif", bands=(3, 2, 1))
    assert img.size == (20, 20)
    with pytest.raises(DataError, match="has 4 bands"):
        array_to_rgb(bands, "x.tif", bands=(0, 1, 7))


def test_supported_extensions_load(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (12, 12, 3), dtype=np.uint8)
    for ext in (".tif", ".tiff", ".jpg", ".jpeg", ".png"):
        p = tmp_path / f"img{ext}"
        Image.fromarray(rgb).save(p)
        assert load_image(p).size == (12, 12)
    grey = tmp_path / "grey.png"
    Image.fromarray(rgb[..., 0]).save(grey)
    assert load_image(grey).mode == "RGB"

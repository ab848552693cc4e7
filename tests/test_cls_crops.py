"""ImageNet crops: RandomResizedCrop and centre-crop boxes against hand-computed values; the eval transform against
the reference (torchvision Resize(256) + CenterCrop(224) on a PIL image) on a known image; decoding paths."""
import io

import numpy as np
import pytest
from PIL import Image

from hrnet_jax.data.ops import crops
from hrnet_jax.data.ops.image import ImageReadError


class Scripted:
    """A stand-in for numpy's Generator that returns scripted draws (uniform, integers) in order."""

    def __init__(self, uniforms, integers=()):
        self.u, self.i, self.calls = list(uniforms), list(integers), []

    def uniform(self, lo, hi):
        v = self.u.pop(0)
        assert lo <= v <= hi
        return v

    def integers(self, lo, hi):
        self.calls.append((lo, hi))
        return self.i.pop(0)


def test_random_resized_crop_box_hand_computed():
    # 100x200 image, area 20000; draw 1: area fraction 0.5 -> 10000, log-ratio 0 -> aspect 1 -> 100 x 100
    rng = Scripted([0.5, 0.0], [0, 37])
    assert crops.random_resized_crop_box(100, 200, rng) == (0, 37, 100, 100)
    assert rng.calls == [(0, 1), (0, 101)]  # top in [0, 100 - 100], left in [0, 200 - 100]
    # area 0.18 -> 3600, aspect 4/3 -> w = round(sqrt(4800)) = 69, h = round(sqrt(2700)) = 52
    import math
    rng = Scripted([0.18, math.log(4 / 3)], [10, 20])
    assert crops.random_resized_crop_box(100, 200, rng) == (10, 20, 52, 69)
    assert rng.calls == [(0, 49), (0, 132)]
    # ten misses (crop taller than the image) -> the centred fallback; 2:1 image clamped to 4/3:
    # h = 100, w = round(100 * 4/3) = 133, left = (200 - 133) // 2 = 33
    rng = Scripted([1.0, math.log(3 / 4)] * 10)
    assert crops.random_resized_crop_box(100, 200, rng) == (0, 33, 100, 133)
    # a 1:4 (tall) image clamped to 3/4: w = 50, h = round(50 / 0.75) = 67, top = (200 - 67) // 2 = 66
    rng = Scripted([1.0, math.log(4 / 3)] * 10)
    assert crops.random_resized_crop_box(200, 50, rng) == (66, 0, 67, 50)


def test_random_resized_crop_boxes_in_range():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(20, 500, size=2)
        t, l, ch, cw = crops.random_resized_crop_box(int(h), int(w), rng)
        assert 0 <= t and t + ch <= h and 0 <= l and l + cw <= w and ch > 0 and cw > 0


def test_center_crop_and_short_side_hand_computed():
    assert crops.short_side_size(375, 500, 256) == (256, 341)       # 500 * 256 / 375 = 341.33 -> 341
    assert crops.short_side_size(500, 333, 256) == (384, 256)       # 500 * 256 / 333 = 384.38 -> 384
    assert crops.center_crop_box(256, 341, 224, 224) == (16, 58, 224, 224)   # round(58.5) = 58 (half to even)
    assert crops.center_crop_box(384, 256, 224, 224) == (80, 16, 224, 224)
    assert crops.center_crop_box(257, 257, 224, 224) == (16, 16, 224, 224)   # round(16.5) = 16
    with pytest.raises(ValueError):
        crops.center_crop_box(100, 300, 224, 224)


def _known_image(h=375, w=500):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx * 255 // (w - 1)), (yy * 255 // (h - 1)), ((xx // 16 + yy // 16) % 2) * 200 + 20],
                    -1).astype(np.uint8)


def _png(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(img, q=95):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=q)
    return buf.getvalue()


def test_eval_transform_matches_reference_resize_then_crop():
    img = _known_image()
    out = crops.decode_resize_center_crop(_png(img), 256, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # the reference, written out: PIL bilinear resize of the short side to 256 (500 -> 341), then the centre
    # 224 window at (16, 58)
    ref = np.asarray(Image.fromarray(img).resize((341, 256), Image.BILINEAR))[16:240, 58:282]
    np.testing.assert_array_equal(out, ref)
    assert np.array_equal(crops.resize_center_crop(img, 256, 224), ref)
    tv = pytest.importorskip("torchvision.transforms")
    ref_tv = np.asarray(tv.Compose([tv.Resize(256), tv.CenterCrop(224)])(Image.fromarray(img)))
    np.testing.assert_array_equal(out, ref_tv)
    # the same on a JPEG (decoded by PIL, as torchvision's ImageFolder loader does)
    data = _jpeg(img)
    ref_j = np.asarray(tv.Compose([tv.Resize(256), tv.CenterCrop(224)])(Image.open(io.BytesIO(data)).convert("RGB")))
    np.testing.assert_array_equal(crops.decode_resize_center_crop(data, 256, 224), ref_j)


def test_random_resized_crop_matches_torchvision_resized_crop():
    img = _known_image()
    box = crops.random_resized_crop_box(375, 500, np.random.default_rng(3))
    out = crops.resized_crop(img, box, 224)
    F = pytest.importorskip("torchvision.transforms.functional")
    ref = np.asarray(F.resized_crop(Image.fromarray(img), *box, [224, 224]))
    np.testing.assert_array_equal(out, ref)


def test_decode_random_resized_crop_draft_close_to_full_decode():
    img = _known_image(600, 800)
    data = _jpeg(img)
    full = crops.decode_random_resized_crop(data, np.random.default_rng(5), 64, draft=False)
    box = crops.random_resized_crop_box(600, 800, np.random.default_rng(5))
    ref = crops.resized_crop(crops.decode_rgb(data), box, 64)
    np.testing.assert_array_equal(full, ref)  # the same box drawn from the same rng, full decode
    fast = crops.decode_random_resized_crop(data, np.random.default_rng(5), 64, draft=True)
    assert fast.shape == (64, 64, 3)
    assert np.mean(np.abs(fast.astype(float) - full.astype(float))) < 6.0


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff\xe0 cut short", b"garbage bytes"])
def test_bad_bytes_are_corrupt_image(data):
    with pytest.raises(ImageReadError) as e:
        crops.decode_random_resized_crop(data, np.random.default_rng(0), 32)
    assert e.value.reason == "corrupt_image"
    with pytest.raises(ImageReadError):
        crops.decode_resize_center_crop(data, 36, 32)


def test_truncated_real_jpeg_is_corrupt():
    data = _jpeg(_known_image(64, 64))
    with pytest.raises(ImageReadError) as e:
        crops.decode_resize_center_crop(data[: len(data) * 2 // 3], 36, 32)
    assert e.value.reason == "corrupt_image"

"""Segmentation loss, OHEM, metrics and inference modes against independent computations: PyTorch's weighted
cross-entropy and ``F.interpolate``, a hand-worked OHEM example, a numpy ``bincount`` confusion matrix, and the
reference's multi-scale + flip / sliding-window procedure written straightforwardly with torch."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hrnet_jax.tasks.segmentation import inference as I
from hrnet_jax.tasks.segmentation.loss import cross_entropy, ohem_cross_entropy, segmentation_loss
from hrnet_jax.tasks.segmentation.metrics import ClassConfusion

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = (0.8373, 0.918, 0.866, 1.0345, 1.0166)


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


# ---- losses -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("align_corners", [False, True])
def test_ocr_loss_is_0_4_aux_plus_main_of_torch_weighted_ce_after_upsampling(align_corners):
    rng = np.random.default_rng(0)
    aux = rng.normal(size=(2, 4, 6, 5)).astype(np.float32)
    main = rng.normal(size=(2, 4, 6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=(2, 16, 24)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.2] = 255
    loss, parts = segmentation_loss((jnp.asarray(aux), jnp.asarray(main)), jnp.asarray(labels),
                                    align_corners=align_corners, class_weights=WEIGHTS,
                                    output_weights=(0.4, 1.0))
    crit = torch.nn.CrossEntropyLoss(weight=torch.tensor(WEIGHTS), ignore_index=255)
    tl = torch.from_numpy(labels.astype(np.int64))

    def torch_ce(x):
        up = F.interpolate(_nchw(x), size=(16, 24), mode="bilinear", align_corners=align_corners)
        return float(crit(up, tl))

    ref_aux, ref_main = torch_ce(aux), torch_ce(main)
    np.testing.assert_allclose(float(parts["loss_0"]), ref_aux, rtol=1e-5)
    np.testing.assert_allclose(float(parts["loss_1"]), ref_main, rtol=1e-5)
    np.testing.assert_allclose(float(loss), 0.4 * ref_aux + 1.0 * ref_main, rtol=1e-5)


def _two_class_logits(p_gt, labels):
    """Logits (1, 1, N, 2) whose softmax gives probability ``p_gt`` to each pixel's label."""
    out = np.zeros((1, 1, len(p_gt), 2), np.float32)
    for i, (p, y) in enumerate(zip(p_gt, labels)):
        out[0, 0, i, y] = math.log(p / (1 - p))
    return out


def test_ohem_by_hand_threshold_from_min_kept_rule_and_from_the_floor():
    # four pixels: labels 0, 0, 1, ignore; ground-truth probabilities 0.5, 0.95, 0.8, (any)
    labels = np.array([[[0, 0, 1, 255]]], np.uint8)
    logits = _two_class_logits([0.5, 0.95, 0.8, 0.7], [0, 0, 1, 0])
    w = (1.0, 2.0)
    l05, l095, l08 = -math.log(0.5), -math.log(0.95), -2.0 * math.log(0.8)   # weighted per-pixel losses
    # sorted valid probabilities [0.5, 0.8, 0.95]; min_kept 1 -> p[1] = 0.8 < floor 0.9 -> threshold 0.9
    got = ohem_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), w, 255, thresh=0.9, min_kept=1)
    np.testing.assert_allclose(float(got), (l05 + l08) / 2, rtol=1e-6)      # unweighted mean of the kept
    # floor 0.7: threshold = p[1] = 0.8 from the min-kept rule; only p < 0.8 stays
    got = ohem_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), w, 255, thresh=0.7, min_kept=1)
    np.testing.assert_allclose(float(got), l05, rtol=1e-6)
    # min_kept beyond the valid count: index n - 1 -> threshold 0.95; 0.95 itself is not kept
    got = ohem_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), w, 255, thresh=0.7, min_kept=100)
    np.testing.assert_allclose(float(got), (l05 + l08) / 2, rtol=1e-6)
    # threshold 0.99: every valid pixel kept
    got = ohem_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), w, 255, thresh=0.99, min_kept=1)
    np.testing.assert_allclose(float(got), (l05 + l095 + l08) / 3, rtol=1e-6)


def test_ohem_groups_are_independent_like_the_per_gpu_reference():
    labels = np.array([[[0, 0, 1, 255]]], np.uint8)
    a = _two_class_logits([0.5, 0.95, 0.8, 0.7], [0, 0, 1, 0])
    b = _two_class_logits([0.3, 0.6, 0.99, 0.7], [0, 0, 1, 0])
    both = jnp.asarray(np.concatenate([a, b])), jnp.asarray(np.concatenate([labels, labels]))
    one = [float(ohem_cross_entropy(jnp.asarray(x), jnp.asarray(labels), None, 255, 0.7, 1)) for x in (a, b)]
    grouped = float(ohem_cross_entropy(*both, None, 255, 0.7, 1, group=1))
    np.testing.assert_allclose(grouped, np.mean(one), rtol=1e-6)
    # one group over both images picks a different threshold: the grouping matters
    assert abs(float(ohem_cross_entropy(*both, None, 255, 0.7, 1, group=0)) - grouped) > 1e-3


def test_cross_entropy_of_an_all_ignore_batch_is_zero():
    assert float(cross_entropy(jnp.ones((1, 2, 2, 3)), jnp.full((1, 2, 2), 255, jnp.uint8))) == 0.0


# ---- metrics ------------------------------------------------------------------------------------------------

def _numpy_scores(pred, label, c):
    keep = label < c
    m = np.bincount(label[keep].astype(np.int64) * c + pred[keep], minlength=c * c).reshape(c, c)
    tp = np.diag(m).astype(np.float64)
    union = m.sum(0) + m.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    return m, 100 * iou.mean(), 100 * tp.sum() / m.sum(), {i: 100 * tp[i] / union[i] for i in range(c) if union[i]}


def test_miou_and_per_class_iou_equal_a_numpy_bincount_over_several_batches_with_ignore_and_padding():
    rng = np.random.default_rng(1)
    c, names = 6, ("a", "b", "c", "d", "e", "f")
    preds = rng.integers(0, c - 1, size=(3, 4, 8, 10))        # class f is never predicted nor labelled
    labels = rng.integers(0, c - 1, size=(3, 4, 8, 10)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.15] = 255
    valid = np.ones((3, 4), bool)
    valid[2, 3] = False                                        # an eval padding row
    state = None
    for p, l, v in zip(preds, labels, valid):
        s = ClassConfusion.of(jnp.asarray(p), jnp.asarray(l), c, jnp.asarray(v), names=names)
        state = s if state is None else state.merge(s)
    got = state.compute()
    keep = valid.reshape(-1)
    m, miou, acc, per = _numpy_scores(preds.reshape(-1, 8, 10)[keep].ravel(),
                                      labels.reshape(-1, 8, 10)[keep].ravel(), c)
    np.testing.assert_array_equal(np.asarray(state.matrix), m)
    np.testing.assert_allclose(got["mIoU"], miou, rtol=1e-9)
    np.testing.assert_allclose(got["pixel_acc"], acc, rtol=1e-9)
    assert set(k for k in got if k.startswith("IoU/")) == {f"IoU/{names[i]}" for i in per}
    for i, v in per.items():
        np.testing.assert_allclose(got[f"IoU/{names[i]}"], v, rtol=1e-9)


def test_confusion_over_8_devices_equals_numpy():
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from hrnet_jax.training import sharding as shd
        from hrnet_jax.tasks.segmentation.metrics import ClassConfusion
        assert jax.device_count() == 8
        mesh = shd.make_mesh(); sh = shd.batch_sharding(mesh)
        rng = np.random.default_rng(3); c = 5
        step = jax.jit(lambda p, l, v: ClassConfusion.of(p, l, c, v))
        state, allp, alll = None, [], []
        for _ in range(3):
            p = rng.integers(0, c, size=(16, 6, 7)); l = rng.integers(0, c, size=(16, 6, 7)).astype(np.uint8)
            l[rng.random(l.shape) < 0.2] = 255
            s = step(*shd.put_batch({"p": p, "l": l, "v": np.ones(16, bool)}, sh).values())
            state = s if state is None else state.merge(s)
            allp.append(p.ravel()); alll.append(l.ravel())
        p, l = np.concatenate(allp), np.concatenate(alll)
        k = l < c
        ref = np.bincount(l[k].astype(np.int64) * c + p[k], minlength=c * c).reshape(c, c)
        np.testing.assert_array_equal(np.asarray(state.matrix), ref)
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip().endswith("OK"), p.stderr[-4000:]


# ---- inference modes ----------------------------------------------------------------------------------------

C = 4
PROJ = np.random.default_rng(7).normal(size=(3, C)).astype(np.float32)


def _jax_model(down: int):
    def fn(x):
        y = jnp.einsum("bhwc,ck->bhwk", x, jnp.asarray(PROJ))
        if down > 1:
            b, h, w, k = y.shape
            y = y.reshape(b, h // down, down, w // down, down, k).mean(axis=(2, 4))
        return y
    return fn


def _torch_model(down: int):
    def fn(x):  # NCHW
        y = torch.einsum("bchw,ck->bkhw", x, torch.from_numpy(PROJ))
        return F.avg_pool2d(y, down) if down > 1 else y
    return fn


def test_sliding_window_with_a_translation_equivariant_model_equals_whole_image():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 21, 37, 3)).astype(np.float32))
    model = _jax_model(1)                   # per-pixel: every window sees exactly its pixels' outputs
    whole = I.whole_image(model, x, align_corners=False, flip=True)
    assert I.window_offsets((21, 37), (8, 16), (5, 10)) == [
        (r, c) for r in (0, 5, 10, 13) for c in (0, 10, 20, 21)]   # the last row/column shifted to the border
    slid = I.sliding_window(model, x, (8, 16), (5, 10), align_corners=False, flip=True)
    np.testing.assert_allclose(np.asarray(slid), np.asarray(whole), rtol=1e-5, atol=1e-5)
    small = I.sliding_window(model, x[:, :6], (8, 16), (8, 16), align_corners=False)   # padded to the crop
    np.testing.assert_allclose(np.asarray(small), np.asarray(whole[:, :6]), rtol=1e-5, atol=1e-5)


def _reference_multiscale(image, scales, base, crop, stride, align, flip, combine):
    """The reference's multi_scale_inference, one image (NCHW torch), written out with loops."""
    model = _torch_model(4)
    _, _, h, w = image.shape

    def infer(x):
        size = x.shape[-2:]
        out = F.interpolate(model(x), size=size, mode="bilinear", align_corners=align)
        if combine == "exp_sum":
            if flip:
                fo = F.interpolate(model(torch.flip(x, [3])), size=size, mode="bilinear", align_corners=align)
                out = 0.5 * (out + torch.flip(fo, [3]))
            return out.exp()
        p = out.softmax(1)
        if flip:
            fo = F.interpolate(model(torch.flip(x, [3])), size=size, mode="bilinear", align_corners=align)
            p = 0.5 * (p + torch.flip(fo, [3]).softmax(1))
        return p

    final = torch.zeros(1, C, h, w, dtype=torch.float64)
    for scale in scales:
        long = int(base * scale + 0.5)
        nh, nw = (long, int(w * long / h + 0.5)) if h > w else (int(h * long / w + 0.5), long)
        img = F.interpolate(image, size=(nh, nw), mode="bilinear", align_corners=False)
        if scale <= 1.0:
            preds = infer(img)
        else:
            rows = int(np.ceil(1.0 * (nh - crop[0]) / stride[0])) + 1
            cols = int(np.ceil(1.0 * (nw - crop[1]) / stride[1])) + 1
            preds = torch.zeros(1, C, nh, nw)
            count = torch.zeros(1, 1, nh, nw)
            for r in range(rows):
                for c in range(cols):
                    h0, w0 = r * stride[0], c * stride[1]
                    h1, w1 = min(h0 + crop[0], nh), min(w0 + crop[1], nw)
                    h0, w0 = max(int(h1 - crop[0]), 0), max(int(w1 - crop[1]), 0)
                    preds[:, :, h0:h1, w0:w1] += infer(img[:, :, h0:h1, w0:w1])
                    count[:, :, h0:h1, w0:w1] += 1
            preds = preds / count
        final += F.interpolate(preds, size=(h, w), mode="bilinear", align_corners=align).double()
    return final if combine == "exp_sum" else final / len(scales)


@pytest.mark.parametrize("combine,align,flip", [("exp_sum", True, True), ("exp_sum", False, False),
                                                ("softmax_mean", False, True)])
def test_multiscale_flip_equals_the_reference_combination(combine, align, flip):
    image = np.random.default_rng(5).normal(size=(1, 32, 64, 3)).astype(np.float32)
    scales, base, crop, stride = (0.5, 1.0, 1.5), 64, (32, 64), (32, 64)   # 1.5: 48x96, 2x2 windows
    got = I.multi_scale(_jax_model(4), jnp.asarray(image), scales, base_size=base, crop_hw=crop, stride_hw=stride,
                        align_corners=align, flip=flip, combine=combine)
    ref = _reference_multiscale(_nchw(image), scales, base, crop, stride, align, flip, combine)
    np.testing.assert_allclose(np.asarray(got), ref.numpy().transpose(0, 2, 3, 1), rtol=2e-5, atol=2e-5)

"""The narrow HRNetV2p Faster R-CNN end to end (jit, train / eval, overfit), the loss on a hand-worked case, the
mmdet checkpoint mapping (a state dict written from torch modules built here with mmdet's names) and the
parameter counts of the published detectors (shape-only)."""
import math

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp
import optax

from hrnet_jax.models.backbone import HRNetConfig
from hrnet_jax.models.detection import DETECTOR_NAMES, create_detector
from hrnet_jax.models.stage import StageConfig
from hrnet_jax.tasks.detection.loss import detection_loss

TINY = HRNetConfig(stem_width=16, stages=(
    StageConfig(1, 1, "BOTTLENECK", (1,), (8,)),
    StageConfig(1, 2, "BASIC", (1, 1), (8, 16)),
    StageConfig(1, 3, "BASIC", (1, 1, 1), (8, 16, 32)),
    StageConfig(1, 4, "BASIC", (1, 1, 1, 1), (8, 16, 32, 64)),
))
SMALL = dict(config=TINY, num_classes=3, neck_channels=32, fc_channels=64, rpn_pre_nms_top_n=200,
             rpn_post_nms_top_n=100, rpn_max_proposals=100, rpn_pre_nms_top_n_test=200,
             rpn_post_nms_top_n_test=100, rpn_max_proposals_test=100, num_rois=64, detections_per_img=20)


def _batch():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 128, 128, 3)).astype(np.float32) * 0.5
    gt = np.zeros((2, 4, 4), np.float32)
    gt[0, :3] = [[10, 12, 60, 70], [70, 20, 120, 60], [30, 80, 90, 120]]
    gt[1, :2] = [[5, 5, 50, 100], [60, 60, 100, 96]]
    for i, (b, n) in enumerate(((0, 3), (1, 2))):  # paint the objects so there is something to learn
        for x1, y1, x2, y2 in gt[b, :n].astype(int):
            images[b, y1:y2, x1:x2] += 1.5
    labels = np.array([[0, 1, 2, 0], [2, 1, 0, 0]], np.int32)
    valid = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    hw = np.array([[128, 128], [112, 128]], np.int32)
    return images, hw, gt, labels, valid


@pytest.fixture(scope="module")
def small():
    model = create_detector("faster_rcnn_hrnetv2p_w18", **SMALL)
    images, hw, gt, labels, valid = _batch()
    variables = model.init({"params": jax.random.PRNGKey(0)}, images, hw, train=False)
    return model, variables, (images, hw, gt, labels, valid)


def test_train_eval_shapes_and_overfit(small):
    model, variables, (images, hw, gt, labels, valid) = small
    assert set(variables) == {"params", "batch_stats"}
    ev = jax.jit(lambda v, x, s: model.apply(v, x, s, train=False))(variables, images, hw)
    assert ev["boxes"].shape == (2, 20, 4) and ev["scores"].shape == (2, 20) and ev["labels"].dtype == jnp.int32
    assert ev["valid"].shape == (2, 20)
    b = np.asarray(ev["boxes"])
    assert (b[..., 2] <= hw[:, None, 1]).all() and (b[..., 3] <= hw[:, None, 0]).all() and (b >= 0).all()
    sc = np.asarray(ev["scores"])
    assert (np.diff(np.where(np.asarray(ev["valid"]), sc, -1), axis=1) <= 1e-6).all()  # sorted by score

    tx = optax.chain(optax.clip_by_global_norm(10.0), optax.sgd(0.01, momentum=0.9))  # the recipe clips (35)

    @jax.jit
    def step(params, opt, key):
        def f(p):
            out, upd = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, images, hw, gt, labels,
                                   valid, train=True, rngs={"sample": key}, mutable=["batch_stats"])
            loss, aux = detection_loss(out)
            return loss, (aux, upd)
        (loss, (aux, upd)), g = jax.value_and_grad(f, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, loss, aux, upd

    params, opt = variables["params"], tx.init(variables["params"])
    losses, auxes = [], []
    for i in range(20):
        params, opt, loss, aux, upd = step(params, opt, jax.random.PRNGKey(0))
        losses.append(float(loss))
        auxes.append({k: float(v) for k, v in aux.items()})
        assert all(np.isfinite(v) for v in auxes[-1].values()), auxes[-1]
    # frozen BN (norm_eval): training does not change the running statistics
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 upd["batch_stats"], variables["batch_stats"])
    assert float(aux["num_pos_rois"]) > 0 and float(aux["num_pos_anchors"]) > 0
    # overfit: the loss falls (the R-CNN box term may rise as better proposals add positive RoIs)
    assert np.mean(losses[-4:]) < 0.6 * losses[0], losses
    assert auxes[-1]["rpn_cls"] < 0.5 * auxes[0]["rpn_cls"] and auxes[-1]["rcnn_cls"] < 0.6 * auxes[0]["rcnn_cls"]
    # the "dropout" stream name (the generic loop's) works too
    out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images, hw, gt, labels, valid,
                      train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    assert out["rcnn_logits"].shape == (2, 64, 4)


def test_loss_hand_worked():
    """One image, 2 sampled anchors (1 positive, logit 0 / target 1 and logit 2 / target 0) and 2 RoIs."""
    out = {
        "rpn_logits": jnp.array([[0.0, 2.0, 5.0]]), "rpn_valid": jnp.array([[1, 1, 0]], bool),
        "rpn_pos": jnp.array([[1, 0, 0]], bool), "rpn_num_pos": jnp.array([1]), "rpn_num_neg": jnp.array([1]),
        "rpn_deltas": jnp.array([[[0.1, 0.0, 0.0, 1.0], [9, 9, 9, 9], [9, 9, 9, 9]]]),
        "rpn_targets": jnp.zeros((1, 3, 4)),
        "rcnn_logits": jnp.array([[[0.0, 0.0, 0.0], [1.0, 0.0, 3.0]]]), "rcnn_labels": jnp.array([[1, 2]]),
        "rcnn_valid": jnp.array([[1, 1]], bool), "rcnn_pos": jnp.array([[1, 0]], bool),
        "rcnn_deltas": jnp.array([[[0.5, -2.0, 0.0, 0.0], [7, 7, 7, 7]]]), "rcnn_targets": jnp.zeros((1, 2, 4)),
    }
    loss, aux = detection_loss(out)
    rpn_cls = (math.log(2.0) + (2.0 + math.log1p(math.exp(-2.0)))) / 2
    beta = 1 / 9
    rpn_box = (0.5 * 0.1 ** 2 / beta + (1.0 - 0.5 * beta)) / 2
    rcnn_cls = (math.log(3.0) + -math.log(math.exp(3) / (math.exp(1) + 1 + math.exp(3)))) / 2
    rcnn_box = (0.5 * 0.25 + (2.0 - 0.5)) / 2
    np.testing.assert_allclose([aux["rpn_cls"], aux["rpn_box"], aux["rcnn_cls"], aux["rcnn_box"]],
                               [rpn_cls, rpn_box, rcnn_cls, rcnn_box], rtol=1e-5)
    np.testing.assert_allclose(loss, rpn_cls + rpn_box + rcnn_cls + rcnn_box, rtol=1e-5)
    assert float(aux["rcnn_acc"]) == 0.5


def _count(name, **kw):
    model = create_detector(name, **kw)
    x = jnp.zeros((1, 64, 64, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.array([[64, 64]]), train=False))
    return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"]))


def test_parameter_counts_near_published():
    """HRNet-Object-Detection README: W18 26.2M, W32 45.0M, W40 60.5M, W48 (mmdet) 79.4M for the whole Faster R-CNN.
    Those figures are in units of 2^20 (27,482,676 / 2^20 = 26.21); in units of 10^6 the detectors are ~5 % larger."""
    for name, pub in (("faster_rcnn_hrnetv2p_w18", 26.2), ("faster_rcnn_hrnetv2p_w32", 45.0),
                      ("faster_rcnn_hrnetv2p_w40", 60.5)):
        n = _count(name, num_classes=80)
        assert abs(n / 2 ** 20 - pub) < 0.15, (name, n, pub)
    # exact, against torchvision's FasterRCNN on timm's HRNet-W18 + the torch HRFPN, whose box regressor also has
    # the background's 4 outputs (4 x 1025 parameters the v2-style JAX head does not have)
    from hrnet_jax.bench_detection import torchvision_faster_rcnn
    tv = torchvision_faster_rcnn("w18", 80, (800, 1344))
    assert sum(p.numel() for p in tv.parameters()) - 4 * 1025 == _count("faster_rcnn_hrnetv2p_w18", num_classes=80)
    assert set(DETECTOR_NAMES) == {f"faster_rcnn_hrnetv2p_w{w}" for w in (18, 32, 40, 48)}
    with pytest.raises(KeyError, match="valid"):
        create_detector("faster_rcnn_hrnetv2p_w33")
    with pytest.raises(TypeError, match="valid"):
        create_detector("faster_rcnn_hrnetv2p_w32", rpn_nms=0.5)


def _torch_mmdet_state_dict(num_classes=3, neck=32, fc=64, background_first=True):
    """An mmdet-layout Faster R-CNN state dict from torch modules built here: timm's HRNet-W18-small features
    (random BN statistics), the torch HRFPN of the benchmark, RPN convs and the 2-fc box head with mmdet's names."""
    from torch import nn
    from hrnet_jax.bench_detection import timm_hrnet_features, torch_hrfpn
    torch.manual_seed(0)
    body = timm_hrnet_features("w18_small_v1").eval()
    for m in body.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    tneck = torch_hrfpn(body.feature_info.channels(), neck)
    rpn = nn.ModuleDict({"rpn_conv": nn.Conv2d(neck, neck, 3, padding=1), "rpn_cls": nn.Conv2d(neck, 3, 1),
                         "rpn_reg": nn.Conv2d(neck, 12, 1)})
    k = num_classes + 1 if background_first else num_classes
    head = nn.ModuleDict({"shared_fcs": nn.ModuleList([nn.Linear(neck * 49, fc), nn.Linear(fc, fc)]),
                          "fc_cls": nn.Linear(fc, num_classes + 1), "fc_reg": nn.Linear(fc, 4 * k)})
    sd = {}
    for prefix, mod in (("backbone.", body), ("neck.", tneck), ("rpn_head.", rpn),
                        ("bbox_head." if background_first else "roi_head.bbox_head.", head)):
        sd.update({prefix + key: v for key, v in mod.state_dict().items()})
    return sd, (body, tneck, rpn, head)


def test_mmdet_checkpoint_strict_load_matches_torch():
    from hrnet_jax.convert import CheckpointMismatchError
    from hrnet_jax.models.backbone import CONFIGS
    from hrnet_jax.models.detection.checkpoint import convention_of, mmdet_to_flax
    from hrnet_jax.models.detection.faster_rcnn import _Backbone, _Neck
    from hrnet_jax.models.detection.roi_head import BBoxHead
    from hrnet_jax.models.detection.rpn import RPNHead

    kw = dict(config=CONFIGS["w18_small_v1"], neck_channels=32, fc_channels=64)
    sd, (body, tneck, rpn, head) = _torch_mmdet_state_dict()
    assert convention_of(sd) == {"background": "first", "legacy_coords": True}
    variables, report = mmdet_to_flax(sd, "faster_rcnn_hrnetv2p_w18", num_classes=3, **kw)
    assert report.ok and report.loaded == len([k for k in sd if not k.endswith("num_batches_tracked")])
    model = create_detector("faster_rcnn_hrnetv2p_w18", num_classes=3, **kw)
    p, s = variables["params"], variables["batch_stats"]
    x = np.random.default_rng(0).standard_normal((1, 64, 96, 3)).astype(np.float32)
    opts = model._opts()
    xs = _Backbone(model.config, opts).apply({"params": p["backbone"], "batch_stats": s["backbone"]}, x)
    feats = _Neck(opts, 32).apply({"params": p["neck"]}, xs)
    with torch.no_grad():
        tfeats = tneck(body(torch.from_numpy(x.transpose(0, 3, 1, 2))))
        for f, t in zip(feats, tfeats):
            np.testing.assert_allclose(np.asarray(f), t.numpy().transpose(0, 2, 3, 1), atol=2e-4, rtol=1e-3)
        rpn_out = RPNHead(3, 32).apply({"params": p["rpn_head"]}, feats)
        for (lg, dl), t in zip(rpn_out, tfeats):
            y = torch.relu(rpn["rpn_conv"](t))
            np.testing.assert_allclose(np.asarray(lg), rpn["rpn_cls"](y).permute(0, 2, 3, 1).reshape(1, -1).numpy(),
                                       atol=2e-4, rtol=1e-3)
            np.testing.assert_allclose(np.asarray(dl),
                                       rpn["rpn_reg"](y).permute(0, 2, 3, 1).reshape(1, -1, 4).numpy(),
                                       atol=2e-4, rtol=1e-3)
        roi = np.random.default_rng(1).standard_normal((5, 7, 7, 32)).astype(np.float32)
        cls, reg = BBoxHead(3, 64).apply({"params": p["bbox_head"]}, roi)
        h = torch.from_numpy(roi.transpose(0, 3, 1, 2)).reshape(5, -1)
        for fc in head["shared_fcs"]:
            h = torch.relu(fc(h))
        tcls, treg = head["fc_cls"](h).numpy(), head["fc_reg"](h).numpy()
    np.testing.assert_allclose(np.asarray(cls), tcls[:, [1, 2, 3, 0]], atol=1e-4)  # v1: background first → last
    np.testing.assert_allclose(np.asarray(reg).reshape(5, 12), treg[:, 4:], atol=1e-4)

    # v2 layout (roi_head. prefix, background last) loads as is
    sd2, _ = _torch_mmdet_state_dict(background_first=False)
    _, rep2 = mmdet_to_flax(sd2, "faster_rcnn_hrnetv2p_w18", num_classes=3, **kw)
    assert rep2.ok
    # a removed and an added key are named by the report; strict loading refuses
    bad = dict(sd)
    del bad["neck.fpn_conv.2.weight"]
    bad["rpn_head.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError) as e:
        mmdet_to_flax(bad, "faster_rcnn_hrnetv2p_w18", num_classes=3, **kw)
    assert e.value.report.missing == ["neck.fpn_conv.2.weight"]
    assert e.value.report.unexpected == ["rpn_head.extra.weight"]
    _, rep = mmdet_to_flax(bad, "faster_rcnn_hrnetv2p_w18", num_classes=3, strict=False, **kw)
    assert "neck.fpn_conv.2.weight" in rep.describe() and "rpn_head.extra.weight" in rep.describe()

"""Checkpoint conversion: the official repos' key layouts, containers, strictness and bad files.

The official pose / segmentation layouts are generated here from the key grammar written out in
hrnet-reference.md section 7.1 (independently of the model code), checked against the reference key totals
(section 7.1 table), then converted strictly.
"""
import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hrnet_jax import models
from hrnet_jax.convert import (CheckpointMismatchError, flax_to_torch, load_variables, main as convert_main,
                               torch_to_flax)

# (NUM_MODULES, NUM_BLOCKS per branch, NUM_CHANNELS) of stages 2-4; stage 1 (planes, blocks).
STD = lambda c: ((64, 4), [(1, 4, (c, 2 * c)), (4, 4, (c, 2 * c, 4 * c)), (3, 4, (c, 2 * c, 4 * c, 8 * c))])
SMALL_V1 = ((32, 1), [(1, 2, (16, 32)), (1, 2, (16, 32, 64)), (1, 2, (16, 32, 64, 128))])


def grammar_keys(arch, head, num_out, multi_scale_last=True):
    """{torch key: shape} following the reference key grammar (section 7.1), without num_batches_tracked."""
    keys = {}

    def conv(k, o, i, kk, bias=False):
        keys[k + ".weight"] = (o, i, kk, kk)
        if bias:
            keys[k + ".bias"] = (o,)

    def bn(k, c):
        for s in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{k}.{s}"] = (c,)

    conv("conv1", 64, 3, 3), bn("bn1", 64), conv("conv2", 64, 64, 3), bn("bn2", 64)
    (planes, nblocks), stages = arch
    inp = 64
    for k in range(nblocks):
        p = f"layer1.{k}"
        conv(p + ".conv1", planes, inp, 1), bn(p + ".bn1", planes)
        conv(p + ".conv2", planes, planes, 3), bn(p + ".bn2", planes)
        conv(p + ".conv3", planes * 4, planes, 1), bn(p + ".bn3", planes * 4)
        if k == 0:
            conv(p + ".downsample.0", planes * 4, inp, 1), bn(p + ".downsample.1", planes * 4)
        inp = planes * 4
    pre = [inp]
    for s, (nmod, nb, ch) in enumerate(stages, start=2):
        t = f"transition{s - 1}"
        for i, c in enumerate(ch):
            if i < len(pre):
                if pre[i] != c:
                    conv(f"{t}.{i}.0", c, pre[i], 3), bn(f"{t}.{i}.1", c)
            else:
                conv(f"{t}.{i}.0.0", c, pre[-1], 3), bn(f"{t}.{i}.0.1", c)
        for m in range(nmod):
            outs = 1 if (s == 4 and m == nmod - 1 and not multi_scale_last) else len(ch)
            for b, c in enumerate(ch):
                for k in range(nb):
                    p = f"stage{s}.{m}.branches.{b}.{k}"
                    conv(p + ".conv1", c, c, 3), bn(p + ".bn1", c), conv(p + ".conv2", c, c, 3), bn(p + ".bn2", c)
            if len(ch) > 1:
                for i in range(outs):
                    for j in range(len(ch)):
                        f = f"stage{s}.{m}.fuse_layers.{i}.{j}"
                        if j > i:
                            conv(f + ".0", ch[i], ch[j], 1), bn(f + ".1", ch[i])
                        for k in range(i - j):
                            o = ch[i] if k == i - j - 1 else ch[j]
                            conv(f"{f}.{k}.0", o, ch[j], 3), bn(f"{f}.{k}.1", o)
        pre = list(ch)
    total = sum(pre)
    if head == "pose":
        conv("final_layer", num_out, pre[0], 1, bias=True)
    elif head in ("seg", "ocr"):
        pfx = "last_layer" if head == "seg" else "aux_head"
        conv(f"{pfx}.0", total, total, 1, True), bn(f"{pfx}.1", total), conv(f"{pfx}.3", num_out, total, 1, True)
    if head == "ocr":
        conv("conv3x3_ocr.0", 512, total, 3, True), bn("conv3x3_ocr.1", 512)
        ocb = "ocr_distri_head.object_context_block"
        for f in ("f_pixel", "f_object"):
            conv(f"{ocb}.{f}.0", 256, 512, 1), bn(f"{ocb}.{f}.1.0", 256)
            conv(f"{ocb}.{f}.2", 256, 256, 1), bn(f"{ocb}.{f}.3.0", 256)
        conv(f"{ocb}.f_down.0", 256, 512, 1), bn(f"{ocb}.f_down.1.0", 256)
        conv(f"{ocb}.f_up.0", 512, 256, 1), bn(f"{ocb}.f_up.1.0", 512)
        conv("ocr_distri_head.conv_bn_dropout.0", 512, 1024, 1), bn("ocr_distri_head.conv_bn_dropout.1.0", 512)
        conv("cls_head", num_out, 512, 1, True)
    return keys


def _random_sd(keys, seed=0, torch_tensors=False):
    rng = np.random.RandomState(seed)
    sd = {k: rng.uniform(0.5, 1.5, s).astype(np.float32) for k, s in keys.items()}
    if torch_tensors:
        import torch
        sd = {k: torch.from_numpy(v) for k, v in sd.items()}
    return sd


# (model, grammar args, reference key count without num_batches_tracked, reference param count)
LAYOUTS = [
    ("pose_hrnet_w32", (STD(32), "pose", 17, False), 1462, 28_536_113),
    ("seg_hrnet_w48", (STD(48), "seg", 19, True), 1533, 65_859_379),
    ("seg_hrnet_w18_small_v1", (SMALL_V1, "seg", 19, True), 363, 1_540_819),
    ("seg_hrnet_ocr_w48", (STD(48), "ocr", 19, True), 1576, 70_372_678),
]


@pytest.mark.parametrize("name,args,nkeys,nparams", LAYOUTS)
def test_official_key_layout_converts_strictly(name, args, nkeys, nparams):
    keys = grammar_keys(*args)
    assert len(keys) == nkeys
    n = sum(int(np.prod(s)) for k, s in keys.items() if not k.endswith(("running_mean", "running_var")))
    assert n == nparams
    sd = _random_sd(keys)
    if name.startswith("seg"):  # segmentation checkpoints are FullModel(model, loss).state_dict()
        sd = {"model." + k: v for k, v in sd.items()}
        sd["loss.criterion.weight"] = np.ones(19, np.float32)
    variables, report = torch_to_flax(sd, name, return_report=True)
    assert report.ok and report.loaded == nkeys
    back = flax_to_torch(variables, name)
    plain = {k.removeprefix("model."): v for k, v in sd.items() if not k.startswith("loss.")}
    assert set(back) == set(plain)
    for k in plain:
        np.testing.assert_array_equal(back[k], plain[k])


def test_values_land_where_pytorch_puts_them():
    keys = grammar_keys(STD(32), "pose", 17, False)
    sd = _random_sd(keys, seed=5)
    v = torch_to_flax({"module." + k: a for k, a in sd.items()}, "pose_hrnet_w32", scan=False)
    # Conv2d (O, I, kh, kw) -> Flax (kh, kw, I, O)
    np.testing.assert_array_equal(v["params"]["final_layer"]["kernel"][0, 0, 5, 3],
                                  sd["final_layer.weight"][3, 5, 0, 0])
    np.testing.assert_array_equal(v["params"]["stage2"]["0"]["fuse_layers"]["1.0.0.0"]["kernel"][2, 1, 7, 9],
                                  sd["stage2.0.fuse_layers.1.0.0.0.weight"][9, 7, 2, 1])
    np.testing.assert_array_equal(v["batch_stats"]["stage4"]["2"]["branches.3"]["1"]["bn2"]["var"],
                                  sd["stage4.2.branches.3.1.bn2.running_var"])
    # scanned layout: stage3 modules 0..3 stacked on the leading axis
    vs = torch_to_flax(sd, "pose_hrnet_w32")
    np.testing.assert_array_equal(vs["params"]["stage3"]["0:4"]["branches.1"]["0:4"]["conv1"]["kernel"][2, 3],
                                  v["params"]["stage3"]["2"]["branches.1"]["3"]["conv1"]["kernel"])


def test_missing_and_mismatched_keys_are_named():
    keys = grammar_keys(STD(32), "pose", 17, False)
    sd = _random_sd(keys)
    del sd["stage3.1.branches.2.0.bn1.running_mean"]
    sd["final_layer.weight"] = np.zeros((16, 32, 1, 1), np.float32)
    sd["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        torch_to_flax(sd, "pose_hrnet_w32")
    msg = str(e.value)
    assert "stage3.1.branches.2.0.bn1.running_mean" in msg
    assert "final_layer.weight" in msg and "(16, 32, 1, 1)" in msg
    assert "extra.weight" in msg
    # non-strict: loads the rest and reports
    _, report = torch_to_flax(sd, "pose_hrnet_w32", strict=False, return_report=True)
    assert report.missing == ["stage3.1.branches.2.0.bn1.running_mean"]
    assert [m[0] for m in report.mismatched] == ["final_layer.weight"]


def test_backbone_only_from_classification_checkpoint():
    cls_keys = grammar_keys(STD(32), "cls", 0, True)  # backbone of a CLS checkpoint, 4 fuse outputs
    sd = _random_sd(cls_keys)
    sd["classifier.weight"] = np.zeros((1000, 2048), np.float32)
    sd["incre_modules.0.0.conv1.weight"] = np.zeros((32, 32, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError):
        torch_to_flax(sd, "pose_hrnet_w32")
    v, report = torch_to_flax(sd, "pose_hrnet_w32", backbone_only=True, return_report=True)
    assert report.ok
    assert sorted(report.fresh) == ["final_layer.bias", "final_layer.weight"]
    assert "classifier.weight" in report.ignored and "stage4.2.fuse_layers.3.0.0.0.weight" in report.ignored
    np.testing.assert_array_equal(v["params"]["conv1"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0))


def test_pth_and_safetensors_files_and_cli(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file
    keys = grammar_keys(SMALL_V1, "seg", 19, True)
    sd = _random_sd(keys, seed=2, torch_tensors=True)
    pth = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {"module." + k: t for k, t in sd.items()}}, pth)
    st = tmp_path / "ckpt.safetensors"
    save_file({k: t.numpy() for k, t in sd.items()}, str(st))
    a = torch_to_flax(str(pth), "seg_hrnet_w18_small_v1")
    b = torch_to_flax(str(st), "seg_hrnet_w18_small_v1")
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    out = tmp_path / "orbax"
    assert convert_main([str(pth), "--model", "seg_hrnet_w18_small_v1", "--out", str(out)]) == 0
    restored, meta = load_variables(str(out))
    assert meta["model"] == "seg_hrnet_w18_small_v1"
    for x, y in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(a)):
        np.testing.assert_array_equal(np.asarray(x), y)
    model = models.create("seg_hrnet_w18_small_v1")
    y = model.apply(restored, jnp.zeros((1, 64, 64, 3)), train=False)
    assert y.shape == (1, 16, 16, 19)


class NotWeights:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_non_weights_pickle_is_refused(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    bad = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3), "payload": NotWeights()}, bad)
    with pytest.raises(ValueError, match="not a plain weights file"):
        torch_to_flax(str(bad), "pose_hrnet_w32")
    assert convert_main([str(bad), "--model", "pose_hrnet_w32", "--out", str(tmp_path / "o")]) == 2
    assert "weights" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------- bad files (issue 17)

def _bad_file_cases(tmp_path):
    """{name: (path, text the message must contain)}: each a file the CLI must refuse in one line."""
    from safetensors.numpy import save_file
    st = tmp_path / "ok.safetensors"
    save_file({"conv1.weight": np.zeros((64, 3, 3, 3), np.float32)}, str(st))
    data = st.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"this is not a safetensors file")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "junk.pth").write_bytes(b"hello world, not a pickle" * 8)
    cases = {
        "missing_pth": (tmp_path / "nope.pth", "no such file"),
        "truncated_safetensors": (tmp_path / "cut.safetensors", "not a readable .safetensors file"),
        "corrupt_safetensors": (tmp_path / "junk.safetensors", "not a readable .safetensors file"),
        "empty_pth": (tmp_path / "empty.pth", "the file is empty"),
        "directory": (tmp_path, "is a directory"),
    }
    try:
        import torch
    except ImportError:
        return cases
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3), "x": torch.zeros(1000)}, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3), "x": torch.zeros(1000)}, tmp_path / "old.pth",
               _use_new_zipfile_serialization=False)
    data = (tmp_path / "old.pth").read_bytes()
    (tmp_path / "cut_legacy.pth").write_bytes(data[: len(data) // 2])
    cases.update({
        "truncated_pth": (tmp_path / "cut.pth", "not a readable PyTorch checkpoint, truncated or corrupt"),
        "truncated_legacy_pth": (tmp_path / "cut_legacy.pth", "truncated or corrupt"),
        "corrupt_pth": (tmp_path / "junk.pth", "not a readable PyTorch checkpoint, truncated or corrupt"),
    })
    return cases


def test_bad_files_fail_in_one_line_and_write_nothing(tmp_path, capsys):
    cases = _bad_file_cases(tmp_path)
    for name, (path, expect) in cases.items():
        out = tmp_path / f"out_{name}"
        rc = convert_main([str(path), "--model", "pose_hrnet_w32", "--out", str(out)])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc != 0, name
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert str(path) in lines[0] and expect in lines[0], (name, err)
        assert not out.exists(), name
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_bad_file_through_python_m_exits_nonzero(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    r = subprocess.run([sys.executable, "-m", "hrnet_jax.convert", str(bad), "--model", "pose_hrnet_w32",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and str(bad) in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_failed_write_leaves_previous_output_intact(tmp_path, monkeypatch, capsys):
    from safetensors.numpy import save_file
    import hrnet_jax.convert as convert
    keys = grammar_keys(SMALL_V1, "seg", 19, True)
    src = tmp_path / "w.safetensors"
    save_file(_random_sd(keys, seed=3), str(src))
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.json").write_text('{"model": "previous"}')

    def half_write(directory, variables, meta=None):
        os.makedirs(directory, exist_ok=True)
        open(os.path.join(directory, "model.json"), "w").write("{")
        raise OSError(28, "No space left on device", directory)
    monkeypatch.setattr(convert, "save_variables", half_write)
    rc = convert_main([str(src), "--model", "seg_hrnet_w18_small_v1", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --out") and "No space left on device" in err
    assert len(err.splitlines()) == 1
    assert (out / "model.json").read_text() == '{"model": "previous"}'
    assert sorted(os.listdir(tmp_path)) == ["out", "w.safetensors"]

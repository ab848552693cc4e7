"""Config, typed overrides, the experiment registry (incl. a family module added from outside)."""
import textwrap

import pytest

import experiments
from experiments import get_experiment, list_experiments
from hrnet_jax.train import parse_args
from hrnet_jax.training.config import Config, ConfigError
from hrnet_jax.training.defaults import REQUIRED, default_config


def test_every_experiment_has_the_required_fields():
    names = list_experiments()
    assert "cls_synthetic" in names
    for name in names:
        cfg = get_experiment(name)
        for k in REQUIRED:
            assert k in cfg, (name, k)
        assert cfg.experiment == name and cfg.family.startswith("experiments.")


def test_typed_overrides():
    cfg = get_experiment("cls_synthetic", ["total_steps=1_000", "optimizer.lr=1e-3", "optimizer.nesterov=false",
                                           "optimizer.boundaries=(0.5, 300)", "model.dtype=bfloat16",
                                           "seed=7"])
    assert cfg.total_steps == 1000 and isinstance(cfg.total_steps, int)
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.nesterov is False
    assert cfg.optimizer.boundaries == (0.5, 300) and cfg.model.dtype == "bfloat16" and cfg.seed == 7
    cfg = get_experiment("cls_synthetic", {"optimizer.lr": 2, "batch_size": "64"})
    assert cfg.optimizer.lr == 2.0 and isinstance(cfg.optimizer.lr, float) and cfg.batch_size == 64
    with pytest.raises(ConfigError, match="bad value for batch_size: 'x' is not a int"):
        get_experiment("cls_synthetic", ["batch_size=x"])
    with pytest.raises(ConfigError, match="bad value for log_every: 2.5"):
        get_experiment("cls_synthetic", {"log_every": 2.5})
    with pytest.raises(ConfigError, match="bad value for optimizer.nesterov"):
        get_experiment("cls_synthetic", ["optimizer.nesterov=2"])
    with pytest.raises(ConfigError, match="group of settings"):
        get_experiment("cls_synthetic", ["optimizer=adam"])
    # a dict literal for a group: merged key by key into a filled group, taken whole by an empty (open) one
    cfg = get_experiment("cls_synthetic", ["optimizer={'lr': 0.5}", "optimizer.groups={'head': {'lr_mult': 10.0}}"])
    assert cfg.optimizer.lr == 0.5 and cfg.optimizer.name == "sgd" and cfg.optimizer.groups.head.lr_mult == 10.0
    with pytest.raises(ConfigError, match="unknown config key 'lrr'"):
        get_experiment("cls_synthetic", ["optimizer={'lrr': 0.5}"])


def test_unknown_key_suggests_close_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'optimizer.lrr'; did you mean 'optimizer.lr'"):
        get_experiment("cls_synthetic", ["optimizer.lrr=1"])
    with pytest.raises(ConfigError, match=r"'batchsize'; did you mean 'batch_size'"):
        get_experiment("cls_synthetic", ["batchsize=1"])
    cfg = get_experiment("cls_synthetic")
    with pytest.raises(ConfigError, match="did you mean 'seed'"):
        cfg.sed = 1
    with pytest.raises(AttributeError, match="unknown config key 'totl_steps'"):
        cfg.totl_steps


def test_unknown_experiment():
    with pytest.raises(experiments.UnknownExperimentError, match="Available: .*cls_synthetic"):
        get_experiment("nope")


def test_configs_are_independent_copies():
    a = get_experiment("cls_synthetic")
    a.optimizer.lr = 123.0
    assert get_experiment("cls_synthetic").optimizer.lr != 123.0
    b = a.override({"seed": 3})
    assert b.seed == 3 and a.seed == 0 and b.optimizer.lr == 123.0
    assert isinstance(a, dict) and a.to_dict()["optimizer"]["lr"] == 123.0


def test_a_family_module_and_a_task_plug_in_without_editing_the_registry(tmp_path, monkeypatch):
    pkg = tmp_path / "myfam"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "widgets.py").write_text(textwrap.dedent("""
        from hrnet_jax.tasks.base import Task
        from hrnet_jax.training.defaults import default_config

        class WidgetTask(Task):
            name = "widgets"

        def widget_small():
            return default_config(total_steps=10, batch_size=8, task=dict(name="myfam.widgets:WidgetTask",
                                                                          num_widgets=3))

        EXPERIMENTS = {"widget_small": widget_small}
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(experiments, "FAMILIES", experiments.FAMILIES + ("myfam.widgets",))
    cfg = get_experiment("widget_small", ["task.num_widgets=5"])
    assert cfg.family == "myfam.widgets" and cfg.task.num_widgets == 5 and cfg.log_every == 50
    task = experiments.build_task(cfg)
    assert type(task).__name__ == "WidgetTask" and task.config.task.num_widgets == 5
    assert "widget_small" in list_experiments()
    with pytest.raises(ConfigError, match="unknown task 'posse'; did you mean 'pose'"):
        experiments.build_task(get_experiment("widget_small", ["task.name=posse"]))


def test_cli_parsing():
    flags, ov = parse_args(["--experiment=x", "--workdir", "/w", "--config.a.b=1", "--config.c", "2",
                            "--init_from=/ck"])
    assert flags == {"experiment": "x", "workdir": "/w", "init_from": "/ck"} and ov == ["a.b=1", "c=2"]
    with pytest.raises(ConfigError, match="did you mean --workdir"):
        parse_args(["--workdri=/w"])


def test_default_config_merges_new_groups():
    cfg = default_config(task=dict(k=1), optimizer=dict(name="adam"))
    assert cfg.task.k == 1 and cfg.optimizer.name == "adam" and cfg.optimizer.lr == 0.1
    assert isinstance(cfg.task, Config)


def test_a_config_pickles_and_copies_unchanged():
    """Worker processes receive configs by pickle (grain mp_prefetch); fixed keys must not break that."""
    import copy
    import pickle
    cfg = get_experiment("pose_demo", ["optimizer.lr=0.5"])
    for other in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg)):
        assert other == cfg and type(other) is type(cfg) and other.optimizer.lr == 0.5
        assert type(other.task) is type(cfg.task)

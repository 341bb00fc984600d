"""Every config file in conf/ composes against its schema and passes src.config.validate; wrong
types fail at compose time; bad values fail validate with one line.

conf/sweep (-> sweeps/) is covered by tests/test_sweeps.py.
"""

from __future__ import annotations

import itertools

import pytest
from helpers import CONF, compose_config
from omegaconf import OmegaConf

from src.config import ConfigError, validate

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "sweep"))
# Experiment and debug files are `# @package _global_` (whole protocols, shortcuts): tested apart; pruner
# files are `_target_`s to Optuna pruners, read by Optuna sweeps only (tests/test_pruning.py).
OPTIONS = [
    (g, f.stem) for g in GROUPS if g not in ("experiment", "debug", "pruner") for f in sorted((CONF / g).glob("*.yaml"))
]
LAUNCHERS = sorted(f.stem for f in (CONF / "hydra" / "launcher").glob("*.yaml"))

# What an option needs from the other groups to be a valid experiment.
NEEDS = {("dataset", "cifar10"): ["model.likelihood=gaussian", "model.network=conv"]}


def test_the_groups_and_options_are_the_documented_ones():
    assert GROUPS == [
        "dataset",
        "debug",
        "eval",
        "experiment",
        "logger",
        "model",
        "optimizer",
        "prior",
        "pruner",
        "trainer",
    ]
    assert {f.stem for f in (CONF / "pruner").glob("*.yaml")} == {"none", "median", "successive_halving", "hyperband"}
    assert {f.stem for f in (CONF / "experiment").glob("*.yaml")} == {
        "mnist_density",
        "mnist_clustering",
        "digits_smoke",
    }
    assert {o for g, o in OPTIONS if g == "logger"} == {"none", "tensorboard", "mlflow"}
    assert {o for g, o in OPTIONS if g == "model"} == {"vae", "csrae"}
    assert {o for g, o in OPTIONS if g == "prior"} == {"standard", "gmm", "vamp", "net"}
    assert {o for g, o in OPTIONS if g == "dataset"} == {"digits", "mnist", "fashion_mnist", "cifar10"}
    assert {o for g, o in OPTIONS if g == "optimizer"} == {"adam", "sgd"}


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_option_composes_and_validates(group, option):
    cfg = compose_config(f"{group}={option}", *NEEDS.get((group, option), []), tiny=False)
    validate(cfg)
    node = cfg[group]
    if "name" in node:
        assert getattr(node.name, "value", node.name) == option
    # Every key in the YAML file is a schema field with the file's value (nothing silently dropped).
    raw = OmegaConf.load(CONF / group / f"{option}.yaml")
    for key, value in raw.items():
        if key == "defaults":
            continue
        got = node[key]
        assert getattr(got, "value", got) == value, (key, got, value)


def test_the_python_default_is_the_command_line_default(tmp_path):
    """`run_experiment(Config())` trains what `python -m src.run` trains: the same values, the same
    checkpoint identity."""
    import subprocess
    import sys

    import yaml
    from cli import subprocess_env

    from src.contract import key_config
    from src.schema import Config
    from src.settings import config_fingerprint

    out = subprocess.run(
        [sys.executable, "-m", "src.run", "--cfg", "job"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    cli = yaml.safe_load(out)
    api = OmegaConf.to_container(OmegaConf.structured(Config()), enum_to_str=True)
    assert cli == api
    composed = compose_config(tiny=False)
    assert key_config(Config()) == key_config(composed)
    assert config_fingerprint(Config()) == config_fingerprint(composed)


# `python -m src.run ARGS --cfg job` for many ARGS in one process: the entry point runs as __main__ each
# time, as on the command line, without paying the interpreter's start-up for every option.
MANY_CLI_COMPOSES = """
import contextlib, io, json, runpy, sys
from hydra.core.global_hydra import GlobalHydra

printed = {}
for args in json.loads(sys.argv[1]):
    GlobalHydra.instance().clear()
    sys.argv = ["src/run.py", *args.split(), "--cfg", "job"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_module("src.run", run_name="__main__", alter_sys=True)
    printed[args] = out.getvalue()
print(json.dumps(printed))
"""


def test_every_option_composes_the_same_on_the_command_line_and_in_python(tmp_path):
    """`python -m src.run group=option --cfg job` and src.config.compose_config("group=option") agree,
    for every option of every group (protocols and debug included)."""
    import json
    import subprocess
    import sys

    import yaml
    from cli import subprocess_env

    from src.config import compose_config as api_compose

    options = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
    # a pruner is read by Optuna sweeps only (alone on a command line it is refused)
    overrides = [f"sweep=csrae_optuna {g}={o}" if g == "pruner" else f"{g}={o}" for g, o in options]
    cmd = [sys.executable, "-c", MANY_CLI_COMPOSES, json.dumps(overrides)]
    out = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    from_cli = json.loads(out.stdout)
    assert list(from_cli) == overrides
    for override in overrides:
        got = yaml.safe_load(from_cli[override])
        assert got == OmegaConf.to_container(api_compose(*override.split()), enum_to_str=True), override


@pytest.mark.parametrize("group,option", OPTIONS)
def test_option_files_select_and_override_only(group, option):
    """An option file sets only what differs from the schema's default (src/schema.py is the one
    source of defaults); its `name` is the selection itself."""
    from src.config import GROUP_SCHEMAS

    default = OmegaConf.to_container(OmegaConf.structured(GROUP_SCHEMAS[group]), enum_to_str=True)
    raw = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"))
    restated = [k for k, v in raw.items() if k not in ("defaults", "name") and default.get(k) == v]
    assert restated == [], f"conf/{group}/{option}.yaml restates schema defaults: {restated}"


def test_debug_smoke_shortens_a_protocol():
    cfg = compose_config("experiment=mnist_density", "debug=smoke", tiny=False)
    assert (cfg.trainer.epochs, cfg.trainer.threads, cfg.eval.is_samples, cfg.eval.images) == (1, 1, 10, False)
    assert cfg.dataset.name.value == "mnist" and cfg.trainer.warmup_epochs == 100  # the protocol otherwise
    assert compose_config("debug=smoke", "trainer.epochs=3", tiny=False).trainer.epochs == 3  # the command line wins


@pytest.mark.parametrize("experiment", sorted(f.stem for f in (CONF / "experiment").glob("*.yaml")))
def test_debug_smoke_shortens_an_experiments_pretraining(experiment):
    """experiment=mnist_clustering debug=smoke still pretrained for 50 epochs before its one epoch."""
    full = compose_config(f"experiment={experiment}", tiny=False).trainer
    smoke = compose_config(f"experiment={experiment}", "debug=smoke", tiny=False).trainer
    assert smoke.epochs == 1 and smoke.pretrain_epochs == min(full.pretrain_epochs, 1)


def test_debug_smoke_pretraining_follows_the_experiments_and_the_command_line():
    def pretrain(*overrides):
        return compose_config(*overrides, tiny=False).trainer.pretrain_epochs

    assert pretrain("debug=smoke") == 0  # no pretraining stays none
    assert pretrain("experiment=[mnist_clustering,digits_smoke]", "debug=smoke") == 0  # the last experiment wins
    assert pretrain("experiment=[mnist_clustering,mnist_density]", "debug=smoke") == 1
    assert pretrain("experiment=mnist_clustering", "debug=smoke", "trainer.pretrain_epochs=3") == 3


def test_help_lists_only_the_options_a_command_line_selects(tmp_path):
    import subprocess
    import sys

    from cli import subprocess_env

    out = subprocess.run(
        [sys.executable, "-m", "src.run", "--help"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    groups = out.split("== Configuration groups ==")[1].split("== Config ==")[0]
    lines = dict(line.split(": ", 1) for line in groups.splitlines() if ": " in line)
    assert lines["model"] == "csrae, vae" and lines["debug"] == "none, smoke"
    assert "csrae_nsga2" in lines["sweep"].split(", ")
    assert "schema" not in groups


def test_the_default_config():
    cfg = compose_config(tiny=False)
    validate(cfg)
    assert (cfg.model.name.value, cfg.prior.name.value, cfg.prior.K, cfg.dataset.name.value) == (
        "csrae",
        "gmm",
        10,
        "digits",
    )
    assert cfg.optimizer.name.value == "adam" and cfg.eval.is_samples >= 1
    assert cfg.dataset.download is False


@pytest.mark.parametrize("model,prior", list(itertools.product(["vae", "csrae"], ["standard", "gmm", "vamp", "net"])))
def test_every_model_prior_combination_validates(model, prior):
    validate(compose_config(f"model={model}", f"prior={prior}", tiny=False))


@pytest.mark.parametrize("dataset", ["digits", "mnist", "fashion_mnist", "cifar10"])
@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_every_dataset_with_each_network_validates(dataset, network):
    extra = ["model.likelihood=gaussian"] if dataset == "cifar10" else []
    validate(compose_config(f"dataset={dataset}", f"model.network={network}", *extra, tiny=False))


def test_hydra_dirs_live_under_outputs():
    cfg = compose_config(tiny=False, return_hydra_config=True)
    assert str(cfg.hydra.run.dir).startswith("outputs/")
    assert str(cfg.hydra.sweep.dir).startswith("outputs/")
    assert cfg.hydra.job.chdir is False


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launcher_configs_compose(launcher, monkeypatch):
    monkeypatch.delenv("SLURM_PARTITION", raising=False)
    monkeypatch.setenv("SLURM_ACCOUNT", "acct")
    cfg = compose_config(f"hydra/launcher={launcher}", tiny=False, return_hydra_config=True)
    lc = cfg.hydra.launcher
    assert "submitit" in lc._target_ and "Slurm" in lc._target_
    assert lc.partition is None and lc.account == "acct"  # taken from the environment
    assert lc.cpus_per_task >= 1 and lc.timeout_min > 0 and lc.nodes == 1
    assert (lc.gpus_per_node == 1) == ("gpu" in launcher)
    validate(cfg)


# --- wrong types fail when the config is composed -----------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "prior.K=abc",
        "prior.K=2.5",
        "model.latent_dim=1.5",
        "trainer.epochs=ten",
        "optimizer.lr=fast",
        "trainer.device=gpu",
        "model.name=foo",
        "model.variant=both",
        "model.network=rnn",
        "prior.weights=heavy",
        "prior.init=zeros",
        "trainer.checkpoint=maybe",
        "dataset.max_train=abc",
        "eval.clustering=perhaps",
        "prior.unknown_key=1",
        "trainer.seed=[1,2]",
    ],
)
def test_wrong_types_fail_at_compose_time(override):
    key = override.split("=")[0]
    with pytest.raises(Exception) as err:
        compose_config(override)
    text = f"{err.value} {err.value.__cause__}"
    assert key.split(".")[-1] in text, text


@pytest.mark.parametrize("override", ["model=nope", "prior=nope", "dataset=nope", "optimizer=nope"])
def test_unknown_group_options_fail_at_compose_time(override):
    with pytest.raises(Exception, match="nope"):
        compose_config(override)


# --- bad values fail validate with one line -----------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["prior.K=0"], "prior.K"),
        (["model.latent_dim=0"], "model.latent_dim"),
        (["model.hidden_dim=0"], "model.hidden_dim"),
        (["model.reg_weight=-0.1"], "model.reg_weight"),
        (["model.logvar_min=3"], "model.logvar_min"),
        (["prior.logvar_max=-7"], "prior.logvar_min"),
        (["optimizer.lr=0"], "optimizer.lr"),
        (["optimizer.lr=-1"], "optimizer.lr"),
        (["optimizer.weight_decay=-1"], "optimizer.weight_decay"),
        (["optimizer=sgd", "optimizer.momentum=-0.5"], "optimizer.momentum"),
        (["trainer.epochs=0"], "trainer.epochs"),
        (["trainer.batch_size=0"], "trainer.batch_size"),
        (["trainer.warmup_epochs=-1"], "trainer.warmup_epochs"),
        (["trainer.patience=-1"], "trainer.patience"),
        (["trainer.threads=-1"], "trainer.threads"),
        (["eval.is_samples=0"], "eval.is_samples"),
        (["eval.is_chunk=0"], "eval.is_chunk"),
        (["eval.is_batch=0"], "eval.is_batch"),
        (["dataset.val_fraction=0.5", "dataset.test_fraction=0.5"], "dataset.val_fraction"),
        (["dataset.test_fraction=0"], "dataset.test_fraction"),
        (["dataset.max_train=0"], "dataset.max_train"),
        (["dataset.max_eval=-3"], "dataset.max_eval"),
        (["dataset.max_eval=0"], "dataset.max_eval"),
        (["model=vae", "model.variant=aggregate"], "aggregate"),
        (["prior=standard", "prior.K=5"], "prior.K"),
        (["dataset=cifar10"], "model.likelihood=gaussian"),
        (["model.likelihood=gaussian"], "model.likelihood=bernoulli"),
    ],
)
def test_bad_values_fail_validation_with_one_line(overrides, fragment):
    cfg = compose_config(*overrides)  # the types are right: composing works
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg and msg == msg.strip()


def test_overrides_reach_the_config():
    cfg = compose_config(
        "prior.K=7",
        "model.reg_weight=2.5",
        "model.latent_dim=12",
        "trainer.epochs=3",
        "trainer.batch_size=50",
        "trainer.seed=4",
        "trainer.device=cpu",
        "eval.is_samples=99",
        "dataset.root=/x",
        "dataset.download=true",
        "dataset.max_train=10",
        "dataset.max_eval=5",
        "optimizer.lr=0.01",
        tiny=False,
    )
    validate(cfg)
    assert (
        cfg.prior.K,
        cfg.model.reg_weight,
        cfg.model.latent_dim,
        cfg.trainer.epochs,
        cfg.trainer.batch_size,
        cfg.trainer.seed,
        cfg.eval.is_samples,
    ) == (7, 2.5, 12, 3, 50, 4, 99)
    assert cfg.trainer.device.value == "cpu" and cfg.dataset.root == "/x" and cfg.dataset.download is True
    assert (cfg.dataset.max_train, cfg.dataset.max_eval, cfg.optimizer.lr) == (10, 5, 0.01)
    assert isinstance(cfg.prior.K, int) and isinstance(cfg.model.reg_weight, float)

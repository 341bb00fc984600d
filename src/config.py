"""The configuration: the schemas (src/schema.py) registered for Hydra, composition, and validation.

Each YAML file in conf/<group>/ starts from `/schema/<group>` in its defaults list, so a value of the
wrong type (`prior.K=abc`) or an unknown key fails at compose time, before any data is loaded.
Range checks that a type cannot express live in `validate()`, the one place values are checked: the
command line and the Python entry (`run_experiment(Config())`) both run it before any work starts.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.errors import UserError, first_line
from src.resolvers import CONF_DIR, register_resolvers
from src.schema import (
    Config,
    Constraint,
    CSVariant,
    DatasetConfig,
    DatasetName,
    Device,
    EvalConfig,
    Likelihood,
    LoggerConfig,
    ModelConfig,
    ModelName,
    Network,
    OptimizerConfig,
    PriorConfig,
    PriorInit,
    PriorName,
    TrainerConfig,
    enum_value,
)


class ConfigError(UserError, ValueError):
    """A bad configuration value; the message is one line meant for the user."""


#: The config groups and their schemas; each YAML option starts from `/schema/<group>@_here_`.
GROUP_SCHEMAS = {
    "model": ModelConfig,
    "prior": PriorConfig,
    "dataset": DatasetConfig,
    "optimizer": OptimizerConfig,
    "trainer": TrainerConfig,
    "eval": EvalConfig,
    "logger": LoggerConfig,
}


def register_configs() -> None:
    """Register the schemas (in the `schema` group, which no command line selects) and the resolvers the
    config files use (src.resolvers). Every entry point calls this before composing; only the first call
    registers (Hydra refuses a second registration of a name)."""
    cs = ConfigStore.instance()
    if "config.yaml" not in cs.repo.get("schema", {}):
        cs.store(group="schema", name="config", node=Config)
        for group, schema in GROUP_SCHEMAS.items():
            cs.store(group="schema", name=group, node=schema)
    register_resolvers()


def compose_config(*overrides: str, hydra: bool = False) -> DictConfig:
    """The config `python -m src.run <overrides>` trains (with its `hydra` node when `hydra` is true):
    the Python way to select options, e.g. compose_config("model=vae", "prior=vamp")."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def typed_config(cfg: Any) -> DictConfig:
    """A composed config as it is; a dataclass (the Python entry: `run_experiment(Config(...))`) typed by
    its schema as composition types the command line's, so `DatasetConfig(name="mnist")` works and a
    wrong type (`PriorConfig(K="abc")`) is one ConfigError line."""
    if OmegaConf.is_config(cfg):
        return cfg
    try:
        return OmegaConf.structured(cfg)
    except OmegaConfBaseException as e:
        first = first_line(e)
        raise ConfigError(f"{first} (key {e.full_key})" if getattr(e, "full_key", None) else first) from None


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# torch.manual_seed takes 64 bits but numpy / scikit-learn (the k-means refit) only 32; the run
# also seeds its evaluation with seed + 1.
MAX_SEED = 2**32 - 2
# samples.png is one grid: past this it is unreadable, and decoding them all at once may not fit in memory.
MAX_IMAGES = 10_000


def _floats(node: Any, prefix: str = ""):
    """(dotted key, value) for every float leaf of a config group."""
    items = node.items() if hasattr(node, "items") else vars(node).items()
    for k, v in items:
        if isinstance(v, float):
            yield f"{prefix}{k}", v
        elif hasattr(v, "items") and not isinstance(v, (str, Enum)):
            yield from _floats(v, f"{prefix}{k}.")


def validate(cfg: Any) -> None:
    """Range and consistency checks a type cannot express; raises ConfigError with one line."""
    m, p, d, o, t, e = cfg.model, cfg.prior, cfg.dataset, cfg.optimizer, cfg.trainer, cfg.eval
    for group in ("model", "prior", "dataset", "optimizer", "trainer", "eval"):
        for key, v in _floats(getattr(cfg, group), f"{group}."):
            _require(math.isfinite(v), f"{key} must be a finite number, got {v}")
    for key, seed in (
        ("trainer.seed", t.seed),
        ("dataset.split_seed", d.split_seed),
        ("dataset.eval_binarize_seed", d.eval_binarize_seed),
        ("eval.fewlabel_seed", e.fewlabel_seed),
    ):
        _require(0 <= seed <= MAX_SEED, f"{key} must be in [0, {MAX_SEED}], got {seed}")
    _require(p.K >= 1, f"prior.K must be >= 1, got {p.K}")
    _require(m.latent_dim >= 1, f"model.latent_dim must be >= 1, got {m.latent_dim}")
    _require(m.hidden_dim >= 1, f"model.hidden_dim must be >= 1, got {m.hidden_dim}")
    _require(m.reg_weight >= 0, f"model.reg_weight must be >= 0, got {m.reg_weight}")
    _require(m.logvar_min < m.logvar_max, "model.logvar_min must be < model.logvar_max")
    _require(p.logvar_min < p.logvar_max, "prior.logvar_min must be < prior.logvar_max")
    _require(o.lr > 0, f"optimizer.lr must be > 0, got {o.lr}")
    _require(o.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {o.weight_decay}")
    _require(o.momentum >= 0, f"optimizer.momentum must be >= 0, got {o.momentum}")
    _require(t.epochs >= 1, f"trainer.epochs must be >= 1, got {t.epochs}")
    _require(t.batch_size >= 1, f"trainer.batch_size must be >= 1, got {t.batch_size}")
    _require(t.warmup_epochs >= 0, f"trainer.warmup_epochs must be >= 0, got {t.warmup_epochs}")
    _require(t.patience >= 0, f"trainer.patience must be >= 0, got {t.patience}")
    cpus = os.cpu_count() or 1
    _require(
        0 <= t.threads <= cpus,
        f"trainer.threads must be in [0, {cpus}] (0: torch's default; this machine has {cpus} CPUs), got {t.threads}",
    )
    _require(e.is_samples >= 1, f"eval.is_samples must be >= 1, got {e.is_samples}")
    _require(e.is_chunk >= 1 and e.is_batch >= 1, "eval.is_chunk and eval.is_batch must be >= 1")
    _require(e.interim_every >= 0, f"eval.interim_every must be >= 0 (0: no interim values), got {e.interim_every}")
    _require(
        e.interim_is_samples >= 1 and e.interim_points >= 1,
        "eval.interim_is_samples and eval.interim_points must be >= 1",
    )
    _require(
        1 <= e.n_images <= MAX_IMAGES,
        f"eval.n_images must be in [1, {MAX_IMAGES}] (samples in samples.png; eval.images=false for none), "
        f"got {e.n_images}",
    )
    # Early stopping, the best checkpoint and the validation NLL all need a validation split.
    _require(
        0 < d.val_fraction < 1 and 0 < d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1,
        "dataset.val_fraction and dataset.test_fraction must be in (0, 1) and sum to < 1",
    )
    _require(d.max_train is None or d.max_train >= 1, "dataset.max_train must be >= 1 or null")
    _require(d.max_eval is None or d.max_eval >= 1, "dataset.max_eval must be >= 1 or null")
    _require(t.pretrain_epochs >= 0, f"trainer.pretrain_epochs must be >= 0, got {t.pretrain_epochs}")
    _require(
        m.hidden_dims is None or (len(m.hidden_dims) >= 1 and min(m.hidden_dims) >= 1),
        f"model.hidden_dims must be null or a non-empty list of widths >= 1, got {m.hidden_dims}",
    )
    if m.network == Network.relu_mlp:
        _require(m.hidden_dims is not None, "model.network=relu_mlp needs model.hidden_dims (e.g. [500,500,2000])")
    if m.constraint == Constraint.reconstruction:
        _require(
            m.target_recon is not None and m.target_recon > 0,
            "model.constraint=reconstruction needs model.target_recon > 0 (nats per data point)",
        )
        _require(m.reg_weight > 0, "model.constraint=reconstruction needs model.reg_weight > 0 (the starting weight)")
        _require(0 <= m.geco_alpha < 1, f"model.geco_alpha must be in [0, 1), got {m.geco_alpha}")
        _require(m.geco_rate is None or m.geco_rate > 0, f"model.geco_rate must be > 0 or null, got {m.geco_rate}")
    _require(p.code_dim >= 1 and p.hidden_dim >= 1, "prior.code_dim and prior.hidden_dim must be >= 1")
    if p.init == PriorInit.kmeans and p.name == PriorName.gmm:
        _require(
            p.kmeans_samples >= p.K,
            f"prior.kmeans_samples={p.kmeans_samples} must be >= prior.K={p.K} "
            "(the k-means refit needs at least one point per component)",
        )
    if t.device == Device.cuda:
        from src.settings import resolve_device

        try:
            resolve_device("cuda")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if m.variant == CSVariant.aggregate:
        _require(m.name == ModelName.csrae, "model.variant=aggregate applies to model=csrae only")
    if p.name == PriorName.standard:
        _require(p.K == 1, f"prior=standard has one component; got prior.K={p.K} (use prior=gmm)")
    if d.name == DatasetName.cifar10:
        _require(
            m.likelihood == Likelihood.gaussian,
            "dataset=cifar10 is continuous RGB: use model.likelihood=gaussian (and model.network=conv)",
        )
    elif d.binarize:
        _require(
            m.likelihood == Likelihood.bernoulli, f"dataset={d.name.value} is binarised: use model.likelihood=bernoulli"
        )
    need, limit = estimate_step_bytes(cfg), memory_limit_bytes()
    _require(
        need <= limit,
        f"prior.K={p.K}, model.latent_dim={m.latent_dim}, trainer.batch_size={t.batch_size}: "
        f"one training step needs an estimated {need / 2**30:.3g} GiB, more than the "
        f"{limit / 2**30:.3g} GiB of memory here; use smaller values",
    )


def estimate_step_bytes(cfg: Any) -> int:
    """A rough lower bound on the memory of one training step (float32): parameters with their
    gradients and Adam moments, plus the largest temporaries, [B, K, latent] for the regulariser
    ([B, B, latent] for the aggregate variant) and [B, pixels] for the decoder. Meant to refuse
    what can never fit (prior.K=10**9), not to tune batch sizes."""
    from src.data import IMAGE_SHAPES

    m, p, t = cfg.model, cfg.prior, cfg.trainer
    c, h, w = IMAGE_SHAPES[enum_value(cfg.dataset.name)]
    pixels, latent, k, b = c * h * w, m.latent_dim, p.K, t.batch_size
    widths = list(m.hidden_dims or [m.hidden_dim, m.hidden_dim])  # the decoder mirrors the encoder
    inner = sum(a * z for a, z in zip(widths, widths[1:]))
    networks = 2 * (pixels * widths[0] + inner) + 3 * widths[-1] * latent + widths[0] * pixels
    prior = {PriorName.vamp: k * pixels, PriorName.net: k * p.code_dim + 2 * p.hidden_dim * latent}.get(
        p.name, 2 * k * latent
    )
    pairs = b * k * latent + (b * b * latent if m.variant == CSVariant.aggregate else 0)
    return 4 * (4 * (networks + prior) + 4 * pairs + 4 * b * pixels)


def memory_limit_bytes() -> int:
    """Physical memory, or the container's limit (cgroup v2) when that is lower."""
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = min(limit, int(Path("/sys/fs/cgroup/memory.max").read_text().strip()))
    except (OSError, ValueError):  # no cgroup v2, or "max"
        pass
    return limit


def unknown_keys(cfg: Any) -> list[str]:
    """One warning per key that no schema declares (`+trainer.epoch=50` adds a key nothing reads),
    with the closest declared key when there is one."""
    schemas = GROUP_SCHEMAS
    if not hasattr(cfg, "keys"):  # the dataclass schema itself has no extra keys
        return []
    nodes = [("", Config, [k for k in cfg.keys() if k != "hydra"])]
    nodes += [(f"{g}.", schema, list(cfg[g].keys())) for g, schema in schemas.items() if g in cfg]
    out = []
    for prefix, schema, keys in nodes:
        known = [f.name for f in fields(schema)]
        for key in keys:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
                out.append(f"{prefix}{key} is not a configuration key: nothing reads it{hint}")
    return out

"""Typed schemas of every config group: the one source of the defaults.

`Config()` is the default experiment (`python -m src.run` with no overrides composes the same
values); the YAML files in conf/ select an option and override only what differs from these
defaults. Pure dataclasses: no Hydra here (src/config.py registers them and validates values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional


def enum_value(v: Any) -> Any:
    """An option of a config as its name: an enum member's value, anything else (a plain string from a
    YAML file or a DictConfig) as it is."""
    return getattr(v, "value", v)


def _choices(name: str, *values: str) -> type[Enum]:
    """A str Enum whose members are named by their values (OmegaConf checks a value against them)."""
    return Enum(name, {v: v for v in values}, type=str, module=__name__, qualname=name)


ModelName = _choices("ModelName", "vae", "csrae")
# per_sample: mean over the batch of D_CS(q(z|x_b) || p(z));
# aggregate: D_CS(batch mixture (1/B) Σ_b q(z|x_b) || p(z)), GMM <-> GMM.
CSVariant = _choices("CSVariant", "per_sample", "aggregate")
# mlp: VampPrior gated MLP, 300-300; relu_mlp: plain ReLU MLP (VaDE: 500-500-2000), widths from
# model.hidden_dims; conv: convolutional encoder and decoder.
Network = _choices("Network", "mlp", "relu_mlp", "conv")
# none: minimise recon + w · R with the scheduled weight w;
# reconstruction: GECO, minimise R subject to E[recon] <= model.target_recon.
Constraint = _choices("Constraint", "none", "reconstruction")
# bernoulli: binary data; gaussian: continuous data in [0, 1], dequantised, per-pixel learned variance.
Likelihood = _choices("Likelihood", "bernoulli", "gaussian")
PriorName = _choices("PriorName", "standard", "gmm", "vamp", "net")
MixtureWeights = _choices("MixtureWeights", "uniform", "learned")
# kmeans: refit the GMM to the encoder's posterior means (VaDE); random: means drawn from N(0, init_scale²).
PriorInit = _choices("PriorInit", "random", "kmeans")
DatasetName = _choices("DatasetName", "digits", "mnist", "fashion_mnist", "cifar10")
OptimizerName = _choices("OptimizerName", "adam", "sgd")
LoggerName = _choices("LoggerName", "none", "tensorboard", "mlflow")
Device = _choices("Device", "auto", "cpu", "cuda")


@dataclass
class ModelConfig:
    name: ModelName = ModelName.csrae
    # β for vae, λ for csrae: the weight of the regulariser after warm-up.
    reg_weight: float = 1.0
    variant: CSVariant = CSVariant.per_sample
    network: Network = Network.mlp
    latent_dim: int = 40
    hidden_dim: int = 300
    likelihood: Likelihood = Likelihood.bernoulli
    # Encoder log-variance clamp (VampPrior's Hardtanh(-6, 2)).
    logvar_min: float = -6.0
    logvar_max: float = 2.0
    # Hidden widths of the mlp / relu_mlp encoder (the decoder mirrors them); null = [hidden_dim, hidden_dim].
    hidden_dims: Optional[List[int]] = None
    # GECO (docs/PROTOCOLS.md): the regulariser's weight becomes 1/λ, λ a Lagrange multiplier of
    # E[recon] <= target_recon (nats per data point), updated every step; reg_weight is its start.
    constraint: Constraint = Constraint.none
    target_recon: Optional[float] = None  # κ
    geco_alpha: float = 0.99  # moving average of the constraint
    # ν: log λ moves by ν · C_ma per step (C in nats per data point); null = geco.RELATIVE_RATE / κ,
    # i.e. by RELATIVE_RATE times the relative violation C_ma / κ, whatever the data's scale.
    geco_rate: Optional[float] = None


@dataclass
class PriorConfig:
    name: PriorName = PriorName.gmm
    K: int = 10
    weights: MixtureWeights = MixtureWeights.uniform
    logvar_min: float = -6.0
    logvar_max: float = 2.0
    init: PriorInit = PriorInit.kmeans  # gmm only; random init collapses components onto each other
    init_scale: float = 1.0  # std of the random initial component means
    init_logvar: float = 0.0
    # kmeans init: refit the components after this epoch; early, while the warm-up keeps the regulariser
    # weak and the codes are close to an autoencoder's (docs/PROTOCOLS.md; 10 also under mnist_density)
    kmeans_epoch: int = 10
    kmeans_samples: int = 2000  # ... on the posterior means of this many training points
    train: bool = True  # False freezes the prior's parameters
    code_dim: int = 16  # net prior: size of the learnable component codes
    hidden_dim: int = 64  # net prior: hidden width of the code -> (mean, logvar) network


@dataclass
class DatasetConfig:
    name: DatasetName = DatasetName.digits
    root: str = "data"
    download: bool = False
    binarize: bool = True
    eval_binarize_seed: int = 777
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    max_train: Optional[int] = None
    max_eval: Optional[int] = None


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.adam
    lr: float = 5e-4
    weight_decay: float = 0.0
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class TrainerConfig:
    epochs: int = 60
    batch_size: int = 100
    warmup_epochs: int = 10  # linear warm-up of the regulariser weight, 0 = none
    pretrain_epochs: int = 0  # autoencoder pretraining (reconstruction only) before training, VaDE-style
    patience: int = 20  # early stopping on the validation loss, 0 = never stop early
    seed: int = 0
    device: Device = Device.auto
    threads: int = 0  # torch CPU threads, 0 = torch's default
    checkpoint: bool = True
    resume: bool = True  # continue from checkpoints/last.pt: rerun with hydra.run.dir=<run dir>
    progress: bool = True  # tqdm bar per epoch on a terminal
    compile: bool = False  # torch.compile the training step (compile time reported apart, not in epoch times)


@dataclass
class EvalConfig:
    is_samples: int = 500  # S for the importance-sampled NLL (5000 for the literature protocol)
    is_chunk: int = 500  # samples per chunk, bounds memory
    is_batch: int = 500  # test points evaluated at once
    clustering: bool = True
    n_images: int = 64
    images: bool = True
    fewlabel: bool = True  # few-label accuracies (fewlabel_* in results.json)
    fewlabel_seed: int = 0  # the labelled subsets; the same for every run, so runs compare paired
    # Optuna trials only (src/sweeps/pruning.py): every interim_every epochs (0 = never) an interim
    # validation NLL, S = interim_is_samples on the first interim_points validation points, goes to the
    # trial's pruner.
    interim_every: int = 1
    interim_is_samples: int = 10
    interim_points: int = 1000


@dataclass
class LoggerConfig:
    """Optional experiment tracker (src/trackers.py); never part of a checkpoint's identity."""

    name: LoggerName = LoggerName.none
    dir: Optional[str] = None  # tensorboard: events in <dir>/<run name>, null = <run dir>/tensorboard
    tracking_uri: str = "sqlite:///outputs/mlflow/mlflow.db"  # mlflow: a store or a server URL
    experiment: str = "csrae-sweeps"  # mlflow experiment name
    run_name: Optional[str] = None  # null = what ran, src.trackers.run_name (csrae-gmm-K10-w3-s0)


@dataclass
class Config:
    """The default experiment: CSRAE with a learnable 10-component GMM prior on sklearn's digits."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sweep: Optional[Any] = None  # named sweep files put their notes here
    pruner: Optional[Any] = None  # Optuna sweeps: the trials' pruner (conf/pruner/, src/sweeps/pruning.py)
    tags: list = field(default_factory=list)

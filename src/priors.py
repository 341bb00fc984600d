"""Priors p(z), all seen by the objectives as a diagonal Gaussian mixture (logits, mu [K,D], logvar [K,D]).

- StandardNormal: N(0, I), one fixed component.
- GaussianMixture: K learnable means and log-variances; uniform or learned weights; optional
  refit to the encoder's posterior means with scikit-learn (VaDE-style initialisation).
- VampPrior: K learnable pseudo-inputs mapped through the encoder (Tomczak & Welling 2018).
- NetPrior: K learnable codes mapped by a small network to each component's mean and log-variance.

Component parameters of VampPrior and NetPrior are functions of the encoder / the network, so every
prior exposes `components(encoder)`; the others ignore the argument. What else differs between priors
lives on the class, so that a new prior is a class here (registered in PRIORS) and a YAML file in
conf/prior/: how it is built from its config (`from_config`), the inputs the encoder maps to its
components (`encoder_inputs`), its KL from q(z|x) (`kl`), and whether it can be refitted to the
encoder's codes (`refits_to_codes`, with `fit_to_codes`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from src.divergences import kl_monte_carlo, kl_standard_normal, log_mixture_density
from src.schema import enum_value

Components = tuple[Tensor | None, Tensor, Tensor]


class Prior(nn.Module):
    K: int
    latent_dim: int
    refits_to_codes = False  # True: fit_to_codes(codes, code_vars, seed) refits it (prior.init=kmeans)

    @classmethod
    def from_config(cls, cfg, latent_dim: int, image_shape: tuple[int, int, int]) -> Prior:
        raise NotImplementedError

    def components(self, encoder: nn.Module | None = None) -> Components:
        raise NotImplementedError

    def encoder_inputs(self) -> Tensor | None:
        """Inputs whose encodings are the components (a VampPrior's pseudo-inputs), else None."""
        return None

    def kl(self, z: Tensor, mu: Tensor, logvar: Tensor, components: Components) -> Tensor:
        """KL(q(z|x) || p(z)) per data point, [B]: a one-sample Monte-Carlo estimate at z."""
        return kl_monte_carlo(z, mu, logvar, *components)

    def log_prob(self, z: Tensor, encoder: nn.Module | None = None) -> Tensor:
        return log_mixture_density(z, *self.components(encoder))

    def mixture_weights(self, encoder: nn.Module | None = None) -> Tensor:
        logits, mu, _ = self.components(encoder)
        if logits is None:
            return torch.full((mu.shape[0],), 1.0 / mu.shape[0], device=mu.device)
        return torch.softmax(logits, dim=-1)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        encoder: nn.Module | None = None,
        component: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw n latents: pick a component (from the weights unless given), then sample from it."""
        logits, mu, logvar = self.components(encoder)
        if component is None:
            probs = self.mixture_weights(encoder)
            component = torch.multinomial(probs.cpu(), n, replacement=True, generator=generator).to(mu.device)
        eps = torch.randn(n, mu.shape[1], generator=generator).to(mu.device)
        z = mu[component] + torch.exp(0.5 * logvar[component]) * eps
        return z, component


class StandardNormal(Prior):
    def __init__(self, latent_dim: int):
        super().__init__()
        self.K, self.latent_dim = 1, latent_dim
        self.register_buffer("mu", torch.zeros(1, latent_dim))
        self.register_buffer("logvar", torch.zeros(1, latent_dim))

    @classmethod
    def from_config(cls, cfg, latent_dim, image_shape):
        return cls(latent_dim)

    def components(self, encoder=None) -> Components:
        return None, self.mu, self.logvar

    def kl(self, z, mu, logvar, components):
        return kl_standard_normal(mu, logvar)  # in closed form


def _weight_logits(k: int, learned: bool) -> nn.Parameter | None:
    return nn.Parameter(torch.zeros(k)) if learned else None


class GaussianMixture(Prior):
    refits_to_codes = True

    def __init__(
        self,
        K: int,
        latent_dim: int,
        learned_weights: bool = False,
        init_scale: float = 1.0,
        init_logvar: float = 0.0,
        logvar_min: float = -6.0,
        logvar_max: float = 2.0,
    ):
        super().__init__()
        self.K, self.latent_dim = K, latent_dim
        self.logvar_min, self.logvar_max = logvar_min, logvar_max
        self.mu = nn.Parameter(torch.randn(K, latent_dim) * init_scale)
        self.raw_logvar = nn.Parameter(torch.full((K, latent_dim), float(init_logvar)))
        self.logits = _weight_logits(K, learned_weights)

    @classmethod
    def from_config(cls, cfg, latent_dim, image_shape):
        learned = enum_value(cfg.weights) == "learned"
        return cls(cfg.K, latent_dim, learned, cfg.init_scale, cfg.init_logvar, cfg.logvar_min, cfg.logvar_max)

    def components(self, encoder=None) -> Components:
        return self.logits, self.mu, self.raw_logvar.clamp(self.logvar_min, self.logvar_max)

    @torch.no_grad()
    def fit_to_codes(self, codes: Tensor, code_vars: Tensor | None = None, seed: int = 0) -> None:
        """Refit the components to the encoder's aggregate posterior, VaDE-style.

        A diagonal GMM (scikit-learn) is fitted to the posterior means `codes` [N, D]. With the
        posterior variances `code_vars` [N, D], each component's variance is then moment-matched to
        the aggregate posterior: the spread of its members' means plus their average posterior
        variance (responsibility-weighted). Without that second part the components are narrower
        than the posteriors they must cover: on digits the VAE's KL jumped from 7 to 305 nats at the
        refit and the VAE escaped by putting every point in one component (README, "initialisation").
        """
        from sklearn.mixture import GaussianMixture as SkGMM

        means = codes.detach().cpu().double().numpy()
        gmm = SkGMM(n_components=self.K, covariance_type="diag", random_state=seed, reg_covar=1e-4)
        gmm.fit(means)
        var = torch.as_tensor(gmm.covariances_)
        if code_vars is not None:
            resp = torch.as_tensor(gmm.predict_proba(means))  # [N, K]
            var = var + resp.T @ code_vars.detach().cpu().double() / resp.sum(0).clamp_min(1e-12)[:, None]
        dev = self.mu.device
        self.mu.copy_(torch.as_tensor(gmm.means_, dtype=self.mu.dtype, device=dev))
        self.raw_logvar.copy_(var.log().to(self.mu.dtype).to(dev).clamp(self.logvar_min, self.logvar_max))
        if self.logits is not None:
            self.logits.copy_(torch.as_tensor(gmm.weights_, dtype=self.mu.dtype, device=dev).log())


class VampPrior(Prior):
    """Pseudo-inputs u_k = clamp(w_k, 0, 1) in data space; components are the encoder's q(z|u_k)."""

    def __init__(
        self,
        K: int,
        latent_dim: int,
        image_shape: tuple[int, int, int],
        learned_weights: bool = False,
        init_mean: float = 0.05,
        init_std: float = 0.01,
    ):
        super().__init__()
        self.K, self.latent_dim = K, latent_dim
        # VampPrior's initialisation of the pseudo-inputs: N(0.05, 0.01), then Hardtanh(0, 1).
        self.pseudo_inputs = nn.Parameter(torch.randn(K, *image_shape) * init_std + init_mean)
        self.logits = _weight_logits(K, learned_weights)

    @classmethod
    def from_config(cls, cfg, latent_dim, image_shape):
        return cls(cfg.K, latent_dim, image_shape, enum_value(cfg.weights) == "learned")

    def inputs(self) -> Tensor:
        """The pseudo-inputs u_k, [K, C, H, W]."""
        return self.pseudo_inputs.clamp(0.0, 1.0)

    def encoder_inputs(self) -> Tensor:
        return self.inputs()

    def components(self, encoder=None) -> Components:
        if encoder is None:
            raise ValueError("VampPrior needs the encoder to compute its components")
        mu, logvar = encoder(self.inputs())
        return self.logits, mu, logvar


class NetPrior(Prior):
    """Learnable codes e_k → MLP → (μ_k, log σ²_k): the means and variances are produced by a network."""

    def __init__(
        self,
        K: int,
        latent_dim: int,
        code_dim: int = 16,
        hidden_dim: int = 64,
        learned_weights: bool = False,
        logvar_min: float = -6.0,
        logvar_max: float = 2.0,
    ):
        super().__init__()
        self.K, self.latent_dim = K, latent_dim
        self.codes = nn.Parameter(torch.randn(K, code_dim))
        self.net = nn.Sequential(nn.Linear(code_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 2 * latent_dim))
        self.clamp = nn.Hardtanh(logvar_min, logvar_max)
        self.logits = _weight_logits(K, learned_weights)
        with torch.no_grad():  # start with means spread about like N(0, I) and log-variances near 0
            self.net[-1].bias.zero_()
            self.net[-1].weight[:latent_dim].mul_(3.5)

    @classmethod
    def from_config(cls, cfg, latent_dim, image_shape):
        learned = enum_value(cfg.weights) == "learned"
        return cls(cfg.K, latent_dim, cfg.code_dim, cfg.hidden_dim, learned, cfg.logvar_min, cfg.logvar_max)

    def components(self, encoder=None) -> Components:
        out = self.net(self.codes)
        mu, logvar = out.chunk(2, dim=-1)
        return self.logits, mu, self.clamp(logvar)


PRIORS: dict[str, type[Prior]] = {
    "standard": StandardNormal,
    "gmm": GaussianMixture,
    "vamp": VampPrior,
    "net": NetPrior,
}


def build_prior(cfg, latent_dim: int, image_shape: tuple[int, int, int]) -> Prior:
    """The prior named by cfg.name (a PriorConfig or DictConfig)."""
    name = enum_value(cfg.name)
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}")
    prior = PRIORS[name].from_config(cfg, latent_dim, image_shape)
    if not cfg.train:
        for p in prior.parameters():
            p.requires_grad_(False)
    return prior

"""One autoencoder whose regulariser is chosen by the objective.

    loss = E_batch[ -log p(x|z) ] + w · R,   z ~ q(z|x) (one reparameterised sample)

- objective "kl" (VAE, w = β): R = KL(q(z|x) || p(z)); closed form for the standard normal prior,
  one-sample Monte Carlo log q(z|x) - log p(z) for mixture priors (gmm, vamp, net), which have none.
- objective "cs" (CSRAE, w = λ): R = D_CS(q(z|x) || p(z)), closed form for every prior.
  variant "per_sample" averages D_CS over the batch; "aggregate" takes D_CS between the batch
  mixture (1/B) Σ_b q(z|x_b) and the prior (GMM ↔ GMM).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.divergences import component_log_responsibilities, cs_divergence, cs_divergence_mixtures, log_normal
from src.networks import Decoder, Encoder, build_networks
from src.priors import Prior, build_prior
from src.schema import enum_value

# Gaussian likelihood: clamp the decoder's per-pixel log-variance (avoids collapse onto a pixel).
GAUSS_LOGVAR_MIN, GAUSS_LOGVAR_MAX = -9.0, 2.0


@dataclass
class LossTerms:
    recon: Tensor  # [B] -log p(x|z)
    reg: Tensor  # [B] regulariser per data point (the batch value repeated for "aggregate")

    def total(self, weight: float) -> Tensor:
        return (self.recon + weight * self.reg).mean()


class Autoencoder(nn.Module):
    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        prior: Prior,
        objective: str = "cs",
        variant: str = "per_sample",
        likelihood: str = "bernoulli",
    ):
        super().__init__()
        if objective not in ("kl", "cs"):
            raise ValueError(f"objective must be 'kl' or 'cs', got {objective!r}")
        self.encoder, self.decoder, self.prior = encoder, decoder, prior
        self.objective, self.variant, self.likelihood = objective, variant, likelihood

    # --- the generative model -------------------------------------------------------------
    def prior_components(self):
        return self.prior.components(self.encoder)

    def log_prior(self, z: Tensor) -> Tensor:
        return self.prior.log_prob(z, self.encoder)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def log_likelihood(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x|z) summed over pixels; params from decode(z). x: [B, C, H, W] -> [B]."""
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(params, x, reduction="none").flatten(1).sum(1)
        mean_logit, logvar = params.chunk(2, dim=1)
        logvar = logvar.clamp(GAUSS_LOGVAR_MIN, GAUSS_LOGVAR_MAX)
        return log_normal(x.flatten(1), torch.sigmoid(mean_logit).flatten(1), logvar.flatten(1))

    def mean_image(self, params: Tensor) -> Tensor:
        """The decoder's mean in [0, 1], for pictures."""
        if self.likelihood == "bernoulli":
            return torch.sigmoid(params)
        return torch.sigmoid(params.chunk(2, dim=1)[0])

    # --- inference and the objective --------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(x)

    @staticmethod
    def reparameterise(mu: Tensor, logvar: Tensor) -> Tensor:
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def encode_with_prior(self, x: Tensor):
        """q(z|x) as (mu, logvar) and the prior's components. A VampPrior's pseudo-inputs go through the
        encoder in the same call as x (one pass instead of two; the encoder treats rows independently)."""
        inputs = self.prior.encoder_inputs()
        if inputs is not None:
            mu, logvar = self.encoder(torch.cat([x, inputs.to(x.dtype)]))
            b = x.shape[0]
            return mu[:b], logvar[:b], (self.prior.logits, mu[b:], logvar[b:])
        mu, logvar = self.encode(x)
        return mu, logvar, self.prior_components()

    def regulariser(self, mu: Tensor, logvar: Tensor, z: Tensor, components=None) -> Tensor:
        """R per data point, [B]; components: the prior's, when the caller has them already."""
        logits, p_mu, p_logvar = components if components is not None else self.prior_components()
        if self.objective == "kl":
            return self.prior.kl(z, mu, logvar, (logits, p_mu, p_logvar))
        if self.variant == "aggregate":
            d = cs_divergence_mixtures(None, mu, logvar, logits, p_mu, p_logvar)
            return d.expand(mu.shape[0])
        return cs_divergence(mu, logvar, p_mu, p_logvar, logits)

    def reconstruction(self, x: Tensor) -> Tensor:
        """-log p(x|z), z ~ q(z|x), [B]: the whole loss of autoencoder pretraining."""
        mu, logvar = self.encode(x)
        return -self.log_likelihood(x, self.decode(self.reparameterise(mu, logvar)))

    def loss_terms(self, x: Tensor) -> LossTerms:
        mu, logvar, components = self.encode_with_prior(x)
        z = self.reparameterise(mu, logvar)
        recon = -self.log_likelihood(x, self.decode(z))
        return LossTerms(recon=recon, reg=self.regulariser(mu, logvar, z, components))

    @torch.no_grad()
    def assign_components(self, x: Tensor) -> Tensor:
        """argmax_k log π_k + log N(μ(x) | μ_k, σ²(x) + σ_k²): the clustering assignment, [B]."""
        mu, logvar = self.encode(x)
        logits, p_mu, p_logvar = self.prior_components()
        return component_log_responsibilities(mu, logvar, logits, p_mu, p_logvar).argmax(1)

    @torch.no_grad()
    def sample(
        self, n: int, component: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Decoder means for n prior draws (component picked from the mixture unless given)."""
        z, k = self.prior.sample(n, self.encoder, component=component, generator=generator)
        return self.mean_image(self.decode(z)), k


def build_model(model_cfg, prior_cfg, image_shape: tuple[int, int, int]) -> Autoencoder:
    """The autoencoder for a ModelConfig and PriorConfig (dataclasses or DictConfigs)."""
    likelihood = enum_value(model_cfg.likelihood)
    n_params = 1 if likelihood == "bernoulli" else 2
    hidden = list(getattr(model_cfg, "hidden_dims", None) or [model_cfg.hidden_dim, model_cfg.hidden_dim])
    encoder, decoder = build_networks(
        enum_value(model_cfg.network),
        image_shape,
        model_cfg.latent_dim,
        hidden,
        n_params,
        model_cfg.logvar_min,
        model_cfg.logvar_max,
    )
    prior = build_prior(prior_cfg, model_cfg.latent_dim, image_shape)
    objective = "kl" if enum_value(model_cfg.name) == "vae" else "cs"
    return Autoencoder(encoder, decoder, prior, objective, enum_value(model_cfg.variant), likelihood)


@torch.no_grad()
def loss_terms_mean(model: Autoencoder, x: Tensor, batch: int = 500, device=None) -> tuple[float, float]:
    """Mean reconstruction (-log p(x|z), one sample) and regulariser over a dataset."""
    device = device or next(model.parameters()).device
    model.eval()
    recon, reg, n = 0.0, 0.0, 0
    for start in range(0, x.shape[0], batch):
        terms = model.loss_terms(x[start : start + batch].to(device))
        recon += terms.recon.sum().item()
        reg += terms.reg.sum().item()
        n += terms.recon.shape[0]
    return recon / n, reg / n


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""Encoders and decoders. Every model and prior uses the same networks so runs compare.

`mlp` is the VampPrior one-layer architecture: GatedDense(in→h) → GatedDense(h→h) → mean and
log-variance (clamped by Hardtanh); the decoder mirrors it. `relu_mlp` is a plain ReLU MLP with the
widths of model.hidden_dims (VaDE: 500-500-2000), the decoder mirrored. `conv` is a small strided-conv
network for images whose height and width are multiples of 4.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GatedDense(nn.Module):
    """h = (W x + b) ⊙ σ(V x + c) (Dauphin et al.), as in the VampPrior code."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.h = nn.Linear(n_in, n_out)
        self.g = nn.Linear(n_in, n_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.h(x) * torch.sigmoid(self.g(x))


def he_init(module: nn.Module) -> None:
    """He (Kaiming) normal initialisation of linear and conv weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Encoder(nn.Module):
    """x [B, C, H, W] → (mu, logvar) [B, D], log-variance clamped to [logvar_min, logvar_max]."""

    def __init__(self, body: nn.Module, feat_dim: int, latent_dim: int, logvar_min: float, logvar_max: float):
        super().__init__()
        self.body = body
        self.mean = nn.Linear(feat_dim, latent_dim)
        self.logvar = nn.Linear(feat_dim, latent_dim)
        self.clamp = nn.Hardtanh(logvar_min, logvar_max)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.mean(h), self.clamp(self.logvar(h))


class Decoder(nn.Module):
    """z [B, D] → distribution parameters [B, n_params·C, H, W] (logits, or mean and log-variance)."""

    def __init__(self, body: nn.Module, image_shape: tuple[int, int, int], n_params: int):
        super().__init__()
        self.body = body
        self.image_shape = image_shape
        self.n_params = n_params

    def forward(self, z: Tensor) -> Tensor:
        c, h, w = self.image_shape
        return self.body(z).reshape(z.shape[0], self.n_params * c, h, w)


def _mlp_encoder_body(n_in: int, widths: list[int]) -> nn.Module:
    dims = [n_in, *widths]
    return nn.Sequential(nn.Flatten(), *[GatedDense(a, b) for a, b in zip(dims, dims[1:])])


def _mlp_decoder_body(latent_dim: int, widths: list[int], n_out: int) -> nn.Module:
    dims = [latent_dim, *reversed(widths)]
    return nn.Sequential(*[GatedDense(a, b) for a, b in zip(dims, dims[1:])], nn.Linear(dims[-1], n_out))


def _relu_layers(dims: list[int]) -> list[nn.Module]:
    return [m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b), nn.ReLU())]


def _relu_encoder_body(n_in: int, widths: list[int]) -> nn.Module:
    return nn.Sequential(nn.Flatten(), *_relu_layers([n_in, *widths]))


def _relu_decoder_body(latent_dim: int, widths: list[int], n_out: int) -> nn.Module:
    dims = [latent_dim, *reversed(widths)]
    return nn.Sequential(*_relu_layers(dims), nn.Linear(dims[-1], n_out))


def _conv_encoder_body(image_shape: tuple[int, int, int], hidden: int) -> tuple[nn.Module, int]:
    c, h, w = image_shape
    body = nn.Sequential(
        nn.Conv2d(c, 32, 4, 2, 1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 4, 2, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), hidden),
        nn.ReLU(),
    )
    return body, hidden


def _conv_decoder_body(image_shape: tuple[int, int, int], latent_dim: int, hidden: int, n_params: int) -> nn.Module:
    c, h, w = image_shape
    return nn.Sequential(
        nn.Linear(latent_dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 64 * (h // 4) * (w // 4)),
        nn.ReLU(),
        nn.Unflatten(1, (64, h // 4, w // 4)),
        nn.ConvTranspose2d(64, 32, 4, 2, 1),
        nn.ReLU(),
        nn.ConvTranspose2d(32, n_params * c, 4, 2, 1),
        nn.Flatten(),
    )


def build_networks(
    network: str,
    image_shape: tuple[int, int, int],
    latent_dim: int,
    hidden: int | list[int],
    n_params: int,
    logvar_min: float,
    logvar_max: float,
) -> tuple[Encoder, Decoder]:
    """Encoder and decoder for `network` in {"mlp", "relu_mlp", "conv"}; n_params outputs per pixel.

    `hidden`: the encoder's hidden widths for the MLPs (the decoder mirrors them; an int h means [h, h]);
    the conv network's fully connected width is its last entry.
    """
    widths = [hidden, hidden] if isinstance(hidden, int) else list(hidden)
    c, h, w = image_shape
    n_pixels = c * h * w
    if network == "mlp":
        enc_body, feat = _mlp_encoder_body(n_pixels, widths), widths[-1]
        dec_body = _mlp_decoder_body(latent_dim, widths, n_params * n_pixels)
    elif network == "relu_mlp":
        enc_body, feat = _relu_encoder_body(n_pixels, widths), widths[-1]
        dec_body = _relu_decoder_body(latent_dim, widths, n_params * n_pixels)
    elif network == "conv":
        if h % 4 or w % 4:
            raise ValueError(f"model.network=conv needs image height and width divisible by 4, got {h}x{w}")
        enc_body, feat = _conv_encoder_body(image_shape, widths[-1])
        dec_body = _conv_decoder_body(image_shape, latent_dim, widths[-1], n_params)
    else:
        raise ValueError(f"unknown network {network!r}")
    encoder = Encoder(enc_body, feat, latent_dim, logvar_min, logvar_max)
    decoder = Decoder(dec_body, image_shape, n_params)
    he_init(encoder)
    he_init(decoder)
    return encoder, decoder

"""GECO (Rezende & Viola 2018, "Taming VAEs"): the regulariser minimised under a reconstruction constraint.

    minimise R  subject to  C = E[recon] − κ ≤ 0,   Lagrangian  R + λ·C

which has the gradients of recon + (1/λ)·R scaled by λ. Training keeps the usual loss recon + w·R with
the effective weight w = 1/λ (so train_loss, val_loss and the reg_weight column of metrics.csv keep
their meaning), and after every step

    C_ma ← α·C_ma + (1 − α)·C          (C_ma starts at the first step's C)
    log λ ← clamp(log λ + ν·C_ma, −log W_MAX, −log W_MIN)

with C the batch's mean reconstruction minus κ, in nats per data point. While the reconstruction is
worse than κ, λ grows and the regulariser's weight falls; once it is better, the weight rises. The
update is not differentiated. The clamp keeps w in [W_MIN, W_MAX].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

W_MIN, W_MAX = 1e-3, 1e3

# The default ν is RELATIVE_RATE / κ: log λ then moves by RELATIVE_RATE · C_ma / κ per step, the same
# step for the same relative violation whatever the data's scale (reconstruction terms, and how they
# respond to the weight, grow with the number of pixels: ≈ 15 nats on digits, 60-100 on MNIST).
# Measured on digits (experiment=digits_smoke, 300 epochs): κ = 8, 15 and 24 each end with the last
# fifth of training within 5% of κ, where a fixed ν = 2e-3 swung between 1 and 24 nats at κ = 15.
# On MNIST (κ = 60) it gives ν = 1e-4 (not measured here).
RELATIVE_RATE = 6e-3


def default_rate(target: float) -> float:
    """ν when model.geco_rate is null: RELATIVE_RATE / κ."""
    return RELATIVE_RATE / target


@dataclass(frozen=True)
class GecoSettings:
    target: float  # κ, nats per data point
    alpha: float = 0.99
    rate: float = 1e-4  # ν (default_rate(target) when model.geco_rate is null)
    start_weight: float = 1.0  # w before the first update (model.reg_weight)


def start_log_lambda(settings: GecoSettings) -> float:
    return _clamp(-math.log(settings.start_weight))


def _clamp(log_lambda: float) -> float:
    return min(max(log_lambda, -math.log(W_MAX)), -math.log(W_MIN))


def geco_update(log_lambda: float, c_ma: float | None, recon: float, settings: GecoSettings) -> tuple[float, float]:
    """One step: (log λ, C_ma) after a batch whose mean reconstruction term was `recon`."""
    c = recon - settings.target
    c_ma = c if c_ma is None else settings.alpha * c_ma + (1.0 - settings.alpha) * c
    return _clamp(log_lambda + settings.rate * c_ma), c_ma


def effective_weight(log_lambda: float) -> float:
    """w = 1/λ, the regulariser's weight in recon + w·R."""
    return math.exp(-log_lambda)

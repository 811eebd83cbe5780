"""Per-KV-head gates whose samples mix full and sparse attention while the head roles are learned.

Each gate holds one learnable distribution per KV head of every layer (a `[num_layers, num_kv_heads]` table)
and offers the same four things: a differentiable sample `z` in [0, 1] (one draw of the whole table per
step), the expected density `P(z != 0)` per head that the sparsity constraint acts on, a score per head under
a named threshold rule, and the boolean roles that rule gives (layer 0 always retrieval).

- `HardKumaGate` (LycheeDecode, arXiv 2602.04541 §3; the HardKuma of Bastings et al. 2019): a stretched and
  rectified Kumaraswamy. The default.
- `HardConcreteGate` (Louizos et al. 2018, "Learning sparse neural networks through L0 regularization"): the
  same stretch and rectification over a binary Concrete. An ablation in the paper.
- `ContinuousGate` (DuoAttention-style): a deterministic sigmoid gate, rounded after training. An ablation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# The stretch interval (left, right) of both hard gates: s = left + (right - left) * x, z = clamp(s, 0, 1).
STRETCH = (-0.1, 1.1)
UNIFORM_EPS = 0.001  # u ~ U(eps, 1 - eps), as the public LycheeDecode sampler draws it
THRESHOLD = 0.5
_QUADRATURE_POINTS = 513


def _unit_to_stretched(t: float) -> float:
    """Where the value t of the rectified gate sits on the un-stretched [0, 1] scale (1/12 for t = 0)."""
    left, right = STRETCH
    return (t - left) / (right - left)


def _integrate_unit(survival) -> torch.Tensor:
    """E[z] = integral over t in [0, 1] of P(z > t), by the trapezoid rule (z is in [0, 1])."""
    grid = torch.linspace(0.0, 1.0, _QUADRATURE_POINTS)
    values = torch.stack([survival(float(t)) for t in grid], dim=0)
    return torch.trapezoid(values, dx=1.0 / (_QUADRATURE_POINTS - 1), dim=0)


class Gate(nn.Module):
    """The interface every gate offers; parameters are float32 `[num_layers, num_kv_heads]` tables."""

    name = "gate"
    rules: tuple[str, ...] = ()
    default_rule = ""

    def __init__(self, num_layers: int, num_kv_heads: int):
        super().__init__()
        if num_layers < 2 or num_kv_heads < 1:
            raise ValueError(f"a gate table needs >= 2 layers and >= 1 KV head, got {num_layers} x {num_kv_heads}")
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads

    def _uniform(self, generator: torch.Generator) -> torch.Tensor:
        """u ~ U(eps, 1 - eps) drawn on the CPU generator (the same stream on any device), then moved."""
        shape = (self.num_layers, self.num_kv_heads)
        u = torch.rand(shape, generator=generator, dtype=torch.float32)
        u = UNIFORM_EPS + (1.0 - 2.0 * UNIFORM_EPS) * u
        return u.to(self._device())

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def sample_unit(self, generator: torch.Generator) -> torch.Tensor:
        """The un-stretched variable in (0, 1) of a hard gate."""
        raise NotImplementedError

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """One differentiable draw of z for the whole table, each value in [0, 1]: stretch, then rectify."""
        left, right = STRETCH
        return (left + (right - left) * self.sample_unit(generator)).clamp(0.0, 1.0)

    def prob_nonzero(self) -> torch.Tensor:
        """P(z != 0) per head (differentiable): the density the sparsity constraint acts on."""
        raise NotImplementedError

    def score(self, rule: str | None = None) -> torch.Tensor:
        """Per-head score under a threshold rule; a head is retrieval when its score exceeds 0.5."""
        raise NotImplementedError

    def check_rule(self, rule: str | None) -> str:
        rule = rule or self.default_rule
        if rule not in self.rules:
            raise ValueError(
                f"threshold rule {rule!r} is not defined for the {self.name} gate; use one of {self.rules}"
            )
        return rule

    def roles(self, rule: str | None = None) -> torch.Tensor:
        """Boolean `[num_layers, num_kv_heads]`: score > 0.5, with every head of layer 0 retrieval."""
        table = self.score(rule).detach().cpu() > THRESHOLD
        table[0] = True
        return table


class HardKumaGate(Gate):
    """HardKuma: x ~ Kumaraswamy(a, b), s = -0.1 + 1.2 x, z = clamp(s, 0, 1).

    a, b are kept positive through a log parametrisation (log a = log b = 0 at the start, i.e. a = b = 1, where
    x is uniform) and clamped to [1e-3, 100] when used, which keeps the powers finite.

    Threshold rules: "kuma_mean" (the public LycheeDecode code: the mean of the un-stretched Kumaraswamy,
    E[x] = b B(1 + 1/a, b)); "p_one" (P(z = 1)); "expected_z" (E[z] of the rectified variable).
    """

    name = "hardkuma"
    rules = ("kuma_mean", "p_one", "expected_z")
    default_rule = "kuma_mean"
    _LOG_MIN, _LOG_MAX = math.log(1e-3), math.log(100.0)

    def __init__(self, num_layers: int, num_kv_heads: int):
        super().__init__(num_layers, num_kv_heads)
        self.log_a = nn.Parameter(torch.zeros(num_layers, num_kv_heads))
        self.log_b = nn.Parameter(torch.zeros(num_layers, num_kv_heads))

    def shape_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.log_a.clamp(self._LOG_MIN, self._LOG_MAX).exp()
        b = self.log_b.clamp(self._LOG_MIN, self._LOG_MAX).exp()
        return a, b

    def cdf(self, x: float) -> torch.Tensor:
        """F(x) = 1 - (1 - x^a)^b of the un-stretched Kumaraswamy, per head."""
        return 1.0 - self._survival_unit(x)

    def _survival_unit(self, x: float) -> torch.Tensor:
        a, b = self.shape_params()
        if x <= 0.0:
            return torch.ones_like(a)
        if x >= 1.0:
            return torch.zeros_like(a)
        # (1 - x^a)^b computed as exp(b * log1p(-x^a)) for accuracy when x^a is tiny.
        return torch.exp(b * torch.log1p(-torch.exp(a * math.log(x))))

    def sample_unit(self, generator: torch.Generator) -> torch.Tensor:
        """x ~ Kumaraswamy(a, b) by inverting its CDF at u (reparameterised: differentiable in a, b)."""
        a, b = self.shape_params()
        u = self._uniform(generator)
        return (1.0 - (1.0 - u).pow(1.0 / b)).pow(1.0 / a)

    def prob_nonzero(self) -> torch.Tensor:
        return self._survival_unit(_unit_to_stretched(0.0))  # 1 - F(1/12)

    def kuma_mean(self) -> torch.Tensor:
        a, b = self.shape_params()
        log_beta = torch.lgamma(1.0 + 1.0 / a) + torch.lgamma(b) - torch.lgamma(1.0 + 1.0 / a + b)
        return b * torch.exp(log_beta)

    def score(self, rule: str | None = None) -> torch.Tensor:
        rule = self.check_rule(rule)
        if rule == "kuma_mean":
            return self.kuma_mean()
        if rule == "p_one":
            return self._survival_unit(_unit_to_stretched(1.0))  # 1 - F(11/12)
        return _integrate_unit(lambda t: self._survival_unit(_unit_to_stretched(t)))


class HardConcreteGate(Gate):
    """Hard Concrete (Louizos et al. 2018): s = sigmoid((logit u + log_alpha) / beta), stretched and rectified.

    beta = 2/3 and the stretch (-0.1, 1.1) are the paper's values; log_alpha starts at 0 (P(z != 0) = 0.83).
    Threshold rules: "test_gate" (Louizos' deterministic test-time gate clamp(sigmoid(log_alpha) * 1.2 - 0.1)
    above 0.5, i.e. log_alpha > 0), "p_one" (P(z = 1)), "expected_z" (E[z]).
    """

    name = "hardconcrete"
    rules = ("test_gate", "p_one", "expected_z")
    default_rule = "test_gate"
    beta = 2.0 / 3.0

    def __init__(self, num_layers: int, num_kv_heads: int):
        super().__init__(num_layers, num_kv_heads)
        self.log_alpha = nn.Parameter(torch.zeros(num_layers, num_kv_heads))

    def _survival_unit(self, x: float) -> torch.Tensor:
        """P(s > x) for the un-stretched binary Concrete s: sigmoid(log_alpha - beta * logit(x))."""
        if x <= 0.0:
            return torch.ones_like(self.log_alpha)
        if x >= 1.0:
            return torch.zeros_like(self.log_alpha)
        return torch.sigmoid(self.log_alpha - self.beta * math.log(x / (1.0 - x)))

    def sample_unit(self, generator: torch.Generator) -> torch.Tensor:
        """s ~ BinaryConcrete(log_alpha, beta), reparameterised through the logistic noise logit(u)."""
        u = self._uniform(generator)
        return torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)

    def prob_nonzero(self) -> torch.Tensor:
        return self._survival_unit(_unit_to_stretched(0.0))

    def score(self, rule: str | None = None) -> torch.Tensor:
        rule = self.check_rule(rule)
        if rule == "test_gate":
            left, right = STRETCH
            return (left + (right - left) * torch.sigmoid(self.log_alpha)).clamp(0.0, 1.0)
        if rule == "p_one":
            return self._survival_unit(_unit_to_stretched(1.0))
        return _integrate_unit(lambda t: self._survival_unit(_unit_to_stretched(t)))


class ContinuousGate(Gate):
    """DuoAttention-style: z = sigmoid(w), no noise; density = mean z; rounded (> 0.5) after training.

    w starts at logit(11/12), so the initial density equals HardKuma's at a = b = 1 (P(z != 0) = 11/12).
    """

    name = "continuous"
    rules = ("round",)
    default_rule = "round"

    def __init__(self, num_layers: int, num_kv_heads: int):
        super().__init__(num_layers, num_kv_heads)
        self.logit = nn.Parameter(torch.full((num_layers, num_kv_heads), math.log(11.0)))

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        return torch.sigmoid(self.logit)

    def prob_nonzero(self) -> torch.Tensor:
        return torch.sigmoid(self.logit)

    def score(self, rule: str | None = None) -> torch.Tensor:
        self.check_rule(rule)
        return torch.sigmoid(self.logit)


GATES: dict[str, type[Gate]] = {cls.name: cls for cls in (HardKumaGate, HardConcreteGate, ContinuousGate)}


def make_gate(name: str, num_layers: int, num_kv_heads: int) -> Gate:
    if name not in GATES:
        raise ValueError(f"unknown gate {name!r}; use one of {sorted(GATES)}")
    return GATES[name](num_layers, num_kv_heads)

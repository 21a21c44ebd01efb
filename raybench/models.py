"""Models: every one maps (B, T, F) windows to one output per sample (a value or a logit)."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import torch
from torch import nn

from raybench.config import ModelConfig
from raybench.errors import UserError


class MLPRegressor(nn.Module):
    """The seed benchmark model: temporal average pooling -> Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, input_dim: int, hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.mean(dim=1)).squeeze(-1)


class RNNModel(nn.Module):
    """LSTM or GRU over the window; the last hidden state feeds a linear head."""

    def __init__(self, kind: str, input_dim: int, hidden: int = 64, layers: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[kind]
        # torch applies RNN dropout between layers only; with one layer it would only warn.
        self.rnn = rnn(input_dim, hidden, num_layers=layers, batch_first=True,
                       dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(self.drop(out[:, -1])).squeeze(-1)


class TransformerModel(nn.Module):
    """A small pre-norm Transformer encoder with sinusoidal positions and mean pooling."""

    def __init__(self, input_dim: int, window: int, hidden: int = 64, layers: int = 1,
                 heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Linear(input_dim, hidden)
        pos = torch.arange(window).unsqueeze(1)
        div = torch.exp(torch.arange(0, hidden, 2) * (-math.log(10000.0) / hidden))
        pe = torch.zeros(window, hidden)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div[: hidden // 2])
        self.register_buffer("pos", pe, persistent=False)
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=2 * hidden,
                                           dropout=dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.proj(x) + self.pos[: x.shape[1]])
        return self.head(h.mean(dim=1)).squeeze(-1)


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable of a "package.module:callable" model.kind, or one line saying why not."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"model.kind {spec!r}: cannot import {module_name!r} ({exc}); install "
                        "it or put its directory on PYTHONPATH") from None
    except Exception as exc:  # noqa: BLE001 (a syntax error or a raise in the user's module)
        where = (f" ({exc.filename}, line {exc.lineno})"
                 if isinstance(exc, SyntaxError) and exc.lineno else "")
        raise UserError(f"model.kind {spec!r}: importing {module_name!r} failed: "
                        f"{type(exc).__name__}: {_first_line(exc)}{where}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise UserError(f"model.kind {spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(factory):
        raise UserError(f"model.kind {spec!r}: {attr!r} is a {type(factory).__name__}, not a "
                        "callable that returns an nn.Module")
    return factory


def _from_factory(cfg: ModelConfig, n_features: int, window: int, task: str | None) -> nn.Module:
    factory = load_factory(cfg.kind)
    try:
        model = factory(n_features=n_features, window=window, task=task, **cfg.params)
    except Exception as exc:  # noqa: BLE001 (the user's factory: any error is theirs)
        raise UserError(f"model.kind {cfg.kind!r}: calling it with n_features, window, task "
                        f"and model.params {sorted(cfg.params)} failed: {type(exc).__name__}: "
                        f"{_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.kind {cfg.kind!r} returned a {type(model).__name__}, not a "
                        "torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"model.kind {cfg.kind!r} built a model with no trainable parameters: "
                        "there is nothing to train")
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def check_model(model: nn.Module, n_features: int, window: int, name: str) -> None:
    """A model must map (B, T, F) windows to one output per sample, (B,): tried on a copy with
    a batch of two before any worker starts."""
    import copy

    probe = copy.deepcopy(model).cpu().eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = probe(torch.zeros(2, window, n_features))
    except Exception as exc:  # noqa: BLE001 (the user's forward: any error is theirs)
        raise UserError(f"model {name!r} failed on a (2, {window}, {n_features}) batch: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2,):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model {name!r} returned output of shape {shape} for a (2, {window}, "
                        f"{n_features}) batch; a model must return one value per sample: (2,)")


def build_checked(cfg: ModelConfig, n_features: int, window: int, task: str) -> nn.Module:
    """The model a command is about to train, built on the driver and tried on a batch of two
    before any worker starts: every mistake in it is one line here, not a traceback later."""
    model = build_model(cfg, n_features, window, task)
    check_model(model, n_features, window, cfg.kind)
    return model


def build_model(cfg: ModelConfig, n_features: int, window: int,
                task: str | None = None) -> nn.Module:
    if ":" in cfg.kind:
        return _from_factory(cfg, n_features, window, task)
    input_dim = cfg.input_dim or n_features
    if input_dim != n_features:
        raise UserError(f"model.input_dim is {input_dim} but the data has {n_features} features")
    if cfg.kind == "mlp":
        return MLPRegressor(input_dim, cfg.hidden, cfg.dropout)
    if cfg.kind in ("lstm", "gru"):
        return RNNModel(cfg.kind, input_dim, cfg.hidden, cfg.layers, cfg.dropout)
    if cfg.hidden % cfg.heads or cfg.hidden % 2:
        raise UserError(f"model.hidden ({cfg.hidden}) must be even and divisible by model.heads "
                        f"({cfg.heads}) for the transformer")
    return TransformerModel(input_dim, window, cfg.hidden, cfg.layers, cfg.heads, cfg.dropout)


def loss_fn(task: str) -> nn.Module:
    """MSE for regression; BCE on one logit for classification."""
    return nn.MSELoss() if task == "regression" else nn.BCEWithLogitsLoss()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _lstm_flops(lstm: nn.LSTM, window: int) -> float:
    """Forward FLOPs of an nn.LSTM per sample: 4 gates, each a (input + hidden) x hidden
    multiply-add, every time step and layer (FlopCounterMode sees the fused op as one)."""
    total, size_in = 0.0, lstm.input_size
    for _ in range(lstm.num_layers):
        total += 2 * 4 * lstm.hidden_size * (size_in + lstm.hidden_size) * window
        size_in = lstm.hidden_size
    return total


def flops_per_sample(model: nn.Module, n_features: int, window: int, batch: int = 4) -> float:
    """Model FLOPs of one training sample (forward and backward), counted by torch's
    FlopCounterMode on a copy of the model; fused LSTMs, which it cannot see into, are counted
    analytically (backward = 2 x forward)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).cpu().train()
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        probe(torch.zeros(batch, window, n_features)).sum().backward()
    counted = counter.get_total_flops() / batch
    by_module = counter.get_flop_counts()
    for name, module in probe.named_modules():
        if isinstance(module, nn.LSTM):
            seen = sum(by_module.get(f"{type(probe).__name__}.{name}", {}).values())
            if seen == 0:
                counted += 3 * _lstm_flops(module, window)
    return float(counted)

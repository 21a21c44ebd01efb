"""A sync-bound model for network forecasts (`--model wide_mlp:build`, with scripts/ on the
PYTHONPATH of the nodes): a wide MLP over the flattened window. At width 2048 and depth 2 it has
about 4.2 M parameters (16.8 MB of float32 gradient a step), against a few MFLOP a sample: its
steps are mostly the all-reduce on any link slower than a few Gbit/s.

    PYTHONPATH=$PWD/scripts python -m raybench.cluster local up --nodes 4 --link 100mbit
    python -m raybench.cluster local exec -- python -m raybench.scale --model wide_mlp:build \\
        --workers 1,2,3,4 --placement-strategy STRICT_SPREAD --probe-network ...
"""

from torch import nn


class WideMLP(nn.Module):
    def __init__(self, n_features: int, window: int, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten(), nn.Linear(n_features * window, width),
                                   nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x):  # (B, T, F) -> (B,)
        return self.net(x).squeeze(-1)


def build(n_features: int, window: int, task: str, width: int = 2048, depth: int = 2):
    return WideMLP(n_features, window, width, depth)

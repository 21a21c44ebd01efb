import pytest
import torch

from raybench.config import ModelConfig
from raybench.errors import UserError
from raybench.models import MLPRegressor, build_model, count_parameters, loss_fn


@pytest.mark.parametrize("kind", ["mlp", "lstm", "gru", "transformer"])
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_every_model_gives_one_output_per_sample(kind, task):
    model = build_model(ModelConfig(kind=kind, hidden=16, layers=2), n_features=3, window=12)
    out = model(torch.randn(5, 12, 3))
    assert out.shape == (5,)
    y = torch.rand(5) if task == "regression" else torch.randint(0, 2, (5,)).float()
    loss = loss_fn(task)(out, y)
    loss.backward()
    assert torch.isfinite(loss)


def test_mlp_is_the_seed_architecture():
    model = MLPRegressor(input_dim=1, hidden=64, dropout=0.1)
    layers = list(model.net)
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert (layers[0].in_features, layers[0].out_features, layers[3].out_features) == (1, 64, 1)
    assert count_parameters(model) == 1 * 64 + 64 + 64 + 1
    # Temporal average pooling: a window and its time-reversal give the same output.
    model.eval()
    x = torch.randn(4, 60, 1)
    assert torch.allclose(model(x), model(x.flip(1)), atol=1e-6)


def test_loss_per_task():
    assert isinstance(loss_fn("regression"), torch.nn.MSELoss)
    assert isinstance(loss_fn("classification"), torch.nn.BCEWithLogitsLoss)


def test_bad_model_settings():
    with pytest.raises(UserError, match="divisible by model.heads"):
        build_model(ModelConfig(kind="transformer", hidden=30, heads=4), 1, 10)
    with pytest.raises(UserError, match="input_dim is 3"):
        build_model(ModelConfig(kind="mlp", input_dim=3), 1, 10)

"""A user's own model and data functions, as `--model user_models:small_mlp --data user_models:teacher_data`
name them (this folder is on the test session's path)."""

import numpy as np
import torch
from torch import nn


def small_mlp(input_shape, num_classes, width=32):
    """A model the project does not know: LayerNorm and GELU, no BatchNorm."""
    return nn.Sequential(nn.Linear(input_shape[0], width), nn.GELU(), nn.LayerNorm(width), nn.Linear(width, width),
                         nn.GELU(), nn.Linear(width, num_classes))


def teacher_data(samples=2048, dim=12, classes=4, seed=0):
    """Labels from a random linear teacher with a nonlinearity: ((x_train, y_train), (x_test, y_test))."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples + 512, dim)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(dim, 16))) @ rng.normal(size=(16, classes))
    y = y.argmax(1)
    return (x[:samples], y[:samples]), (x[samples:], y[samples:])


def markov_text_data(characters=12, context=16, windows=1200, seed=0):
    """A character corpus from a random first-order Markov chain, as next-character windows."""
    rng = np.random.default_rng(seed)
    transitions = rng.dirichlet(np.full(characters, 0.3), size=characters)
    ids = np.zeros(windows * (context + 1) + 1, dtype=np.int64)
    for i in range(1, len(ids)):
        ids[i] = rng.choice(characters, p=transitions[ids[i - 1]])
    x = ids[:-1].reshape(windows, context + 1)[:, :context]
    y = ids[1:].reshape(windows, context + 1)[:, :context]
    cut = windows * 5 // 6
    return {"x_train": x[:cut], "y_train": y[:cut], "x_test": x[cut:], "y_test": y[cut:]}


def two_stages(input_shape, num_classes, width=32):
    """A model given as its stage modules, which no schedule can cut again."""
    return [nn.Sequential(nn.Linear(input_shape[0], width), nn.ReLU()), nn.Linear(width, num_classes)]


class TokenInputs(nn.Module):
    """An input model for token ids, which the project has no default for: each token's embedding plus its
    position's, as the first stage of a transformer starts."""

    def __init__(self, x_shape, h_shape, vocabulary=12):
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, h_shape[-1])
        nn.init.normal_(self.tokens.weight, std=0.02)  # the scale of a GPT's own embeddings
        self.positions = nn.Parameter(torch.zeros(h_shape))

    def forward(self, x):
        return self.tokens(x) + self.positions


def raising_factory(index, num_stages):
    raise ValueError("no such layer")


def raising_model(input_shape, num_classes):
    raise ValueError("no such layer")


class Unpicklable(nn.Linear):
    """A module holding a lock: it cannot travel to a stage process."""

    def __init__(self, *args):
        super().__init__(*args)
        import threading

        self.lock = threading.Lock()


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict:
    """Test loss and accuracy of a whole model, as a user would compute them."""
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x))
        y = torch.from_numpy(y)
        loss = nn.functional.cross_entropy(out.flatten(0, -2), y.flatten())
        return {"loss": loss.item(), "accuracy": (out.argmax(-1) == y).float().mean().item()}


class MeanOverPositions(nn.Module):
    def forward(self, h):
        return h.mean(1)


def sequence_classifier(vocab=8, width=32, classes=2, layers=2, seed=0):
    """Stock layers, as a user writes them: embeddings, pre-norm transformer encoder blocks, a mean over positions and
    a linear head; (B, T, D) activations between the blocks, one label per sequence."""
    torch.manual_seed(seed)
    blocks = [nn.TransformerEncoderLayer(width, 2, dim_feedforward=2 * width, dropout=0.0, batch_first=True,
                                         norm_first=True) for _ in range(layers)]
    return nn.Sequential(nn.Embedding(vocab, width), *blocks, MeanOverPositions(), nn.Linear(width, classes))


def majority_token_data(samples=2048, length=12, vocab=8, seed=0):
    """Token sequences labelled by whether token 0 appears more often than token 1: one label per sequence."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, size=(samples + 512, length)).astype(np.int64)
    y = ((x == 0).sum(1) > (x == 1).sum(1)).astype(np.int64)
    return {"x_train": x[:samples], "y_train": y[:samples], "x_test": x[samples:], "y_test": y[samples:]}

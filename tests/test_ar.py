"""The AR baseline that every TextLDM-vs-AR number leans on: its objective is next-token cross-entropy, it learns,
and its KV-cached decoding is the uncached model's."""
import pytest
import torch
import torch.nn.functional as F

from test_learning import PERIOD, VOCAB, PeriodicStream, accuracy
from textldm.config import ARConfig, TrainConfig
from textldm.models.ar import CausalLM, generate
from textldm.training.batches import ar_batches
from textldm.training.loop import fit
from textldm.training.objectives import ARObjective


def test_the_ar_objective_is_next_token_cross_entropy():
    torch.manual_seed(0)
    model = CausalLM(ARConfig(width=32, depth=2, heads=2), 50)
    ids = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(1))
    loss, metrics = ARObjective(model)({"ids": ids}, step=0)
    expected = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1).float(), ids[:, 1:].flatten())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and metrics["loss"] == loss.detach()


@pytest.fixture(scope="module")
def learned_ar():
    torch.manual_seed(0)
    model = CausalLM(ARConfig(width=64, depth=2, heads=4), VOCAB)
    cfg = TrainConfig(steps=150, batch_size=64, lr=3e-3, warmup_steps=10, log_every=10**6)
    fit(ARObjective(model), ar_batches(PeriodicStream(), 12, 64, seed=0, device=torch.device("cpu")), cfg,
        progress=False, precision="fp32")
    return model.eval()


def test_the_ar_baseline_learns_to_copy(learned_ar):
    """The periodic task of the TextLDM learning test: every token repeats the one PERIOD positions earlier.
    Greedy continuations of held-out prompts (4-7 tokens, left-padded in one batch) must copy it."""
    held_out = PeriodicStream().windows(48, 12, torch.Generator().manual_seed(12345))
    cut = torch.arange(48) % 4 + PERIOD
    prompts = [row[:c].tolist() for row, c in zip(held_out, cut)]
    truths = [row[c: c + 2 * PERIOD].tolist() for row, c in zip(held_out, cut)]
    rows = generate(learned_ar, prompts, 2 * PERIOD, temperature=0).tolist()
    assert accuracy(rows, truths) > 0.9


def test_kv_cached_decoding_of_a_trained_model_equals_uncached(learned_ar):
    """Token for token, on a model whose predictions matter (a position or cache offset would break the copy)."""
    prompts = [[1, 2, 3, 4, 1, 2], [5, 6, 7, 8], [9, 0, 3, 2, 9]]
    cached = generate(learned_ar, prompts, 9, temperature=0)
    assert torch.equal(cached, generate(learned_ar, prompts, 9, temperature=0, use_cache=False))

"""The SSD-LM baseline: the forward noising and the loss against a hand-written reference, the cosine schedule and
the top-p projection, no look past the block, the sampler against an uncached hand-written loop, the counted FLOPs
against torch's counter, save/reload, and a tiny model that must learn to continue a prompt."""
import json
import math

import pytest
import torch

from builders import RandomStream, perturbed
from textldm.config import Config, DiTConfig, SampleConfig, SSDConfig, TrainConfig
from textldm.diffusion.simplex import alpha_bar, project, project_sampled, time_grid
from textldm.families.ssd import SSDPipeline
from textldm.models.ssd import SimplexDenoiser
from textldm.runtime.perf import TRAIN_FACTOR, ssd_flops_per_sequence
from textldm.sampling.run import noise_seed
from textldm.training.batches import window_batches
from textldm.training.loop import fit
from textldm.training.objectives.ssd import SSDObjective

VOCAB, CPU, K, T = 11, torch.device("cpu"), 5.0, 100


def tiny_model(block: int = 4, seed: int = 1, vocab: int = VOCAB) -> SimplexDenoiser:
    torch.manual_seed(seed)
    cfg = SSDConfig(width=32, heads=2, depth=2, block_size=block, simplex_k=K, diffusion_steps=T, embed_init="random")
    return perturbed(SimplexDenoiser(cfg, vocab), 0.2, seed).eval()


def tiny_pipeline(block: int = 4, steps: int = 5, top_p: float = 0.5, projection: str = "multi-hot") -> SSDPipeline:
    model = tiny_model(block)
    cfg = Config(dit=DiTConfig(context_min=2, context_max=8, target_min=2, target_max=8), ssd=model.cfg,
                 sample=SampleConfig(steps=steps, top_p=top_p, projection=projection))
    return SSDPipeline(cfg, None, model, -1)


def test_the_cosine_schedule_and_the_projection():
    """a(t) = f(t) / f(0), f = cos((t/T + s)/(1 + s) pi/2)^2: 1 at t = 0, one half at T/2, ~0 at T; the projection
    puts +K on the smallest set of top tokens reaching the nucleus (the top one always), -K elsewhere."""
    f = [math.cos((t / T + 1e-4) / (1 + 1e-4) * math.pi / 2) ** 2 for t in (0, 30, 50, 100)]
    assert torch.allclose(alpha_bar(torch.tensor([0, 30, 50, 100]), T), torch.tensor([x / f[0] for x in f],
                                                                                       dtype=torch.float64))
    assert alpha_bar(0, T) == 1 and abs(float(alpha_bar(50, T)) - 0.5) < 1e-3 and float(alpha_bar(T, T)) < 1e-6
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])  # p = .64 .24 .09 .03
    assert project(logits, 0.5, K).tolist() == [[K, -K, -K, -K]]
    assert project(logits, 0.8, K).tolist() == [[K, K, -K, -K]]
    assert project(logits, 1.0, K).tolist() == [[K, K, K, K]]
    assert time_grid(4, T) == [100, 67, 34, 1, 0]


@pytest.mark.parametrize("scale", [[0.01], [1.0], [8.0], [8.0, 0.01]])  # near-uniform to peaked, and both in a batch
def test_the_projection_equals_a_full_sort_over_a_large_vocabulary(scale):
    """The projection ranks only the top tokens, widening until every row's nucleus ends inside them: on a 20k-token
    vocabulary it marks exactly the tokens a full descending sort puts inside the nucleus, however flat the rows -
    and a peaked row beside a flat one does not stop the widening early."""
    scales = torch.tensor(scale * 3)[:3].view(3, 1, 1)
    logits = torch.randn(3, 5, 20000, generator=torch.Generator().manual_seed(0)) * scales
    for p in (0.05, 0.2, 0.9):
        probs = logits.double().softmax(-1)
        ranked, order = probs.sort(-1, descending=True)
        inside = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, ranked.cumsum(-1) - ranked < p)
        assert torch.equal(project(logits, p, K), torch.where(inside, K, -K).to(logits.dtype))


def test_the_sampling_projection_draws_one_token_from_the_renormalized_nucleus():
    """+K on one token a position: the one whose share of the nucleus' cumulative mass holds the uniform (nucleus 0.8
    of p = .64 .24 .09 .03 is the first two, renormalized .731 / .269), never a token outside the nucleus; on a
    20k-token vocabulary the draws' frequencies are the renormalized nucleus' probabilities."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(5, 4)
    u = torch.tensor([0.0, 0.72, 0.74, 0.999999, 1.0 - 2 ** -53], dtype=torch.float64)
    w = project_sampled(logits, 0.8, K, u)
    assert w.argmax(-1).tolist() == [0, 0, 1, 1, 1] and ((w == K).sum(-1) == 1).all() and ((w == -K).sum(-1) == 3).all()
    assert project_sampled(logits[:1], 0.5, K, u[3:4]).tolist() == [[K, -K, -K, -K]]  # the top token alone
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, generator=g).double() * 3
    draws = project_sampled(logits.expand(40000, -1), 0.5, K, torch.rand(40000, generator=g, dtype=torch.float64))
    picked = torch.bincount(draws.argmax(-1), minlength=20000).double() / 40000
    inside = project(logits[None], 0.5, K)[0] == K
    assert picked[~inside].sum() == 0 and int(inside.sum()) > 5
    nucleus = logits.softmax(-1) * inside
    assert torch.allclose(picked, nucleus / nucleus.sum(), atol=0.01)


def test_the_network_reads_each_rows_time_as_a_fraction_of_T():
    """The block's embedding gains the time embedding of t / T (each row its own): the time module sees exactly
    those fractions, and swapping two rows' times changes their logits."""
    model = tiny_model()
    context = torch.randint(0, VOCAB, (2, 3), generator=torch.Generator().manual_seed(0))
    w = K * torch.randn(2, 4, VOCAB, generator=torch.Generator().manual_seed(1))
    seen = []
    hook = model.time.register_forward_hook(lambda module, inputs, out: seen.append(inputs[0].flatten().tolist()))
    with torch.no_grad():
        a = model(context, w, torch.tensor([10, 90]))
        b = model(context, w, torch.tensor([90, 10]))
    hook.remove()
    assert seen[0] == pytest.approx([10 / T, 90 / T])
    assert not torch.allclose(a, b, atol=1e-4)


def test_the_loss_is_the_block_cross_entropy_at_the_noised_simplex():
    """On a tiny batch: the objective's loss equals, written out, the cross-entropy of the network's block logits
    read from softmax(sqrt(a) w0 + sqrt(1 - a) K eps) (w0 = +K at the token, -K elsewhere) after the window's first
    c tokens; the contexts are the windows' starts, left-padded; the blocks the next B tokens."""
    model = tiny_model(4)
    objective = SSDObjective(model)
    stream = RandomStream(VOCAB)
    batch = objective.batch(stream, 16, 6, torch.Generator().manual_seed(0), slice(None), CPU)
    ids = stream.windows(6, 16, torch.Generator().manual_seed(0))
    loss, _ = objective(batch, 0)
    expected = []
    for i in range(6):
        c = int(batch["key_mask"][i].sum()) - 4  # real context tokens
        assert torch.equal(batch["context"][i, 12 - c:], ids[i, :c]) and torch.equal(batch["block"][i], ids[i, c:c + 4])
        w0 = torch.full((4, VOCAB), -K).scatter(1, ids[i, c:c + 4, None], K)
        a = math.cos((batch["t"][i].item() / T + 1e-4) / (1 + 1e-4) * math.pi / 2) ** 2 / \
            math.cos(1e-4 / (1 + 1e-4) * math.pi / 2) ** 2
        w_t = math.sqrt(a) * w0 + math.sqrt(1 - a) * K * batch["noise"][i]
        with torch.no_grad():
            logits = model(ids[i:i + 1, :c], w_t[None], batch["t"][i:i + 1])[0]  # no padding at all
        expected.append(torch.nn.functional.cross_entropy(logits, ids[i, c:c + 4], reduction="sum"))
    assert torch.allclose(loss, torch.stack(expected).sum() / 24, rtol=1e-4), (loss, torch.stack(expected).sum() / 24)
    assert 1 <= batch["t"].min() and batch["t"].max() <= T


def test_nothing_after_the_block_reaches_it():
    """Windows that differ only after their block give the same contexts, blocks and loss."""
    objective = SSDObjective(tiny_model(4))

    class Tail:  # RandomStream's windows, tokens 12.. replaced
        def __init__(self, fill):
            self.fill = fill

        def windows(self, n, length, g):
            w = RandomStream(VOCAB).windows(n, length, g)
            w[:, 12:] = self.fill
            return w

    a, b = (objective.batch(Tail(fill), 16, 8, torch.Generator().manual_seed(1), slice(None), CPU) for fill in (1, 2))
    short = [int(m.sum()) - 4 <= 8 for m in a["key_mask"]]  # blocks ending by token 12
    assert any(short) and all(torch.equal(a["block"][i], b["block"][i]) for i in range(8) if short[i])
    with torch.no_grad():
        la = objective.model.block_nll(a["context"][short], objective.noisy(a)[short], a["t"][short], a["block"][short],
                                       a["key_mask"][short])
        lb = objective.model.block_nll(b["context"][short], objective.noisy(b)[short], b["t"][short], b["block"][short],
                                       b["key_mask"][short])
    assert torch.equal(la, lb)


def reference_generate(pipe: SSDPipeline, prompt: list[int], length: int, seed: int, row: int) -> list[int]:
    """The sampler written out for one row: each block from K eps, along the grid the logits projected onto the
    nucleus and noised to the next time (fresh noise from the row's generator), the tokens the last logits' argmax;
    the context the last window - B tokens so far, unpadded."""
    model, s = pipe.model, pipe.config.sample
    B, C = model.cfg.block_size, pipe.sampler.context
    out, k = [], 0
    while len(out) < length:
        g = torch.Generator().manual_seed(noise_seed(seed, k, row))
        context = torch.tensor([(prompt + out)[-C:]])
        w = K * torch.randn(B, VOCAB, generator=g)[None]
        grid = time_grid(s.steps, T)
        for t, t_next in zip(grid, grid[1:]):
            with torch.no_grad():
                logits = model(context, w, torch.tensor([t]))
            a = float(alpha_bar(t_next, T))
            if s.projection == "sampling":
                w = project_sampled(logits, s.top_p, K, torch.rand(B, generator=g, dtype=torch.float64)[None])
            else:
                w = project(logits, s.top_p, K)
            if t_next:
                w = math.sqrt(a) * w + math.sqrt(1 - a) * K * torch.randn(B, VOCAB, generator=g)[None]
        out += logits[0].argmax(-1).tolist()
        k += 1
    return out[:length]


@pytest.mark.parametrize("projection", ["multi-hot", "sampling"])
def test_the_sampler_equals_a_hand_written_loop_token_for_token(projection):
    """Prompts of 3, 7 and 14 tokens (the last cut to the window's 12) continued by 9 tokens - three blocks - in one
    batch: each row is the loop's, under either projection; any batch gives a row the same text; NFE = steps per
    block."""
    pipe = tiny_pipeline(4, steps=5, projection=projection)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [(i * 3) % 10 + 1 for i in range(14)]]
    rows = pipe.generate_ids(prompts, length=9, seed=3)
    assert rows == [reference_generate(pipe, p, 9, 3, i) for i, p in enumerate(prompts)]
    assert pipe.generate_ids(prompts[2:], length=9, seed=3, first_index=2) == rows[2:]
    assert pipe.last_evaluations == [15]
    assert rows != pipe.generate_ids(prompts, length=9, seed=4)


def test_the_counted_flops_match_torchs_counter():
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_model(4)
    objective = SSDObjective(model).train()
    batch = objective.batch(RandomStream(VOCAB), 16, 4, torch.Generator().manual_seed(0), slice(None), CPU)
    with FlopCounterMode(display=False) as counter:
        objective(batch, 0)[0].backward()
    assert counter.get_total_flops() == pytest.approx(TRAIN_FACTOR * 4 * ssd_flops_per_sequence(model, 16), rel=0.1)


def test_a_saved_model_reloads_and_writes_the_same_text(tmp_path, tiny_model_dir, capsys):
    """Save, reload, the same text; the sampling projection writes other text, the same through the CLI's flags; a
    projection of no known name is refused."""
    from textldm import load_pipeline
    from textldm.cli import main
    from textldm.errors import UserError
    from textldm.models.lm import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = tiny_model(4, vocab=len(tokenizer))
    cfg = Config(dit=DiTConfig(context_min=2, context_max=8, target_min=2, target_max=8), ssd=model.cfg,
                 sample=SampleConfig(steps=3, top_p=0.5))
    pipe = SSDPipeline(cfg, tokenizer, model, tokenizer.eos_token_id)
    pipe.save_pretrained(tmp_path / "ssd")
    loaded = load_pipeline(tmp_path)
    assert type(loaded) is SSDPipeline
    assert loaded.generate("the man said", length=6, seed=2) == pipe.generate("the man said", length=6, seed=2)
    assert "simplex-diffusion" in (tmp_path / "ssd" / "README.md").read_text()
    with pytest.raises(UserError, match="no tractable likelihood"):
        loaded.token_logprobs([1], [2])
    sampled = pipe.generate("the man said", length=6, seed=2, top_p=0.9, projection="sampling")
    assert sampled != pipe.generate("the man said", length=6, seed=2, top_p=0.9)
    with pytest.raises(SystemExit) as e:  # the CLI's flags reach the same sampler
        main(["generate", "--model", str(tmp_path), "--prompt", "the man said", "--length", "6", "--seed", "2",
              "--top-p", "0.9", "--projection", "sampling", "--json"])
    assert e.value.code in (0, None) and json.loads(capsys.readouterr().out)["continuation"] == sampled[0]
    with pytest.raises(UserError, match="sample.projection. must be one of multi-hot, sampling, got .greedy."):
        pipe.generate("the man said", length=6, projection="greedy")


class PeriodicStream:
    """Windows repeating a random block of 4 tokens: each token is a copy of the one 4 before."""

    def windows(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        blocks = torch.randint(0, 10, (n, 4), generator=generator)
        phase = torch.randint(0, 4, (n, 1), generator=generator)
        return blocks.gather(1, (phase + torch.arange(length)) % 4)


def test_a_tiny_ssd_lm_learns_to_continue_a_prompt():
    """Through the real loop and pipeline, a tiny SSD-LM continues held-out periodic prompts far above chance (10%),
    and at chance given another row's prompt. Measured (200 steps, seeds 0, 1): 0.99, 0.99; given another prompt
    0.09."""
    torch.manual_seed(0)
    stream = PeriodicStream()
    cfg = SSDConfig(width=64, heads=4, depth=2, block_size=4, simplex_k=K, diffusion_steps=T, embed_init="random")
    model = SimplexDenoiser(cfg, 10)
    objective = SSDObjective(model)
    fit(objective, window_batches(stream, objective, 16, 64, seed=1, device=CPU),
        TrainConfig(steps=200, batch_size=64, lr=3e-3, warmup_steps=20, log_every=10**6), progress=False,
        precision="fp32")
    pipe = SSDPipeline(Config(dit=DiTConfig(context_min=2, context_max=8, target_min=2, target_max=8), ssd=cfg,
                              sample=SampleConfig(steps=10, top_p=0.2)), None, model.eval(), -1)
    windows = stream.windows(64, 16, torch.Generator().manual_seed(123))
    rows = pipe.generate_ids(windows[:, :12].tolist(), length=4)
    accuracy = (torch.tensor(rows) == windows[:, 12:]).float().mean().item()
    others = pipe.generate_ids(windows[:, :12].roll(1, 0).tolist(), length=4)
    chance = (torch.tensor(others) == windows[:, 12:]).float().mean().item()
    assert accuracy >= 0.8 and chance < 0.25, (accuracy, chance)


def test_a_block_that_leaves_no_context_is_refused_before_training():
    from textldm import load_config
    from textldm.errors import UserError
    from textldm.families.ssd import train_ssd

    with pytest.raises(UserError, match="ssd.block_size 64 must be shorter than SSD-LM's window"):
        train_ssd(load_config("demo", ["ssd.block_size=64"]))


def test_the_published_layout_is_driven_by_this_projects_sampler(tmp_path, tiny_model_dir):
    """A folder laid out like xhan77/ssdlm (a RoBERTa masked LM - config, weights, tokenizer - with
    embed_sum_layer.pt and timestep_layer.pt beside it) loads through `textldm eval --model`'s path as an SSD-LM: its
    logits are the network's own (the context through the LM's embeddings, the block through the two modules,
    RoBERTa's positions from each row's first real token), and the sampler writes vocabulary tokens."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    from textldm.evaluation.harness import load_contestant
    from textldm.models.lm import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    V = len(tokenizer)
    torch.manual_seed(0)
    mlm = RobertaForMaskedLM(RobertaConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=32, max_position_embeddings=256, pad_token_id=1)).eval()
    mlm.save_pretrained(tmp_path / "ssdlm")
    tokenizer.save_pretrained(tmp_path / "ssdlm")
    embed_sum, timestep = torch.nn.Linear(V, 16, bias=False), torch.nn.Linear(1, 16)
    torch.save(embed_sum.state_dict(), tmp_path / "ssdlm" / "embed_sum_layer.pt")
    torch.save(timestep.state_dict(), tmp_path / "ssdlm" / "timestep_layer.pt")
    pipe = load_contestant(str(tmp_path / "ssdlm")).pipeline
    assert type(pipe) is SSDPipeline and pipe.model.cfg.block_size == 25 and pipe.sampler.context == 175
    context = torch.tensor([[5, 6, 7]])
    w = torch.randn(1, 25, V, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embeds = torch.cat([mlm.get_input_embeddings()(context),
                            embed_sum(w.softmax(-1)) + timestep(torch.tensor([[[0.5]]]))], 1)
        own = mlm(inputs_embeds=embeds, position_ids=torch.arange(28)[None] + 2).logits[:, 3:]
        padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), context], 1)
        keys = torch.arange(30)[None] >= 2
        assert torch.allclose(pipe.model(context, w, torch.tensor([2500])), own, atol=1e-5)
        assert torch.allclose(pipe.model(padded, w, torch.tensor([2500]), keys), own, atol=1e-5)
    rows = pipe.generate_ids([[5, 6, 7]], length=4, steps=2, seed=0)
    assert len(rows[0]) <= 4 and all(0 <= tok < V for tok in rows[0])

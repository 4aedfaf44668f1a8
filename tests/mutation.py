"""Mutation testing of the recipe: apply one recipe-breaking change at a time to a copy of the source, run
the fast suite on it, and report which changes the tests catch ("killed") and which they miss ("survived").

    python tests/mutation.py                      # every mutant against the working tree   (make mutation)
    python tests/mutation.py --only M03,M07       # some of them
    python tests/mutation.py --rev 12af6a5        # against a commit (its own tests): the score before a change
    python tests/mutation.py --out docs/mutation.md

Each mutant is (id, file, the exact code it replaces, the replacement, why it matters). The code to replace
must occur exactly once in the file; where it does not (e.g. a commit that predates the code) the mutant is
reported as "n/a". The source is copied to a temporary folder, so an interrupted run never leaves a mutated
file behind; the copy is imported through PYTHONPATH, ahead of the editable install.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the fast suite: every test not marked slow or browser (pyproject.toml's markers), stopped at the first failure;
# the files that kill most mutants run first (the same tests either way: only the time to a kill changes)
FIRST = ["test_recipe", "test_block", "test_contracts", "test_masked", "test_ssd", "test_lm_blocks", "test_learning", "test_ar",
         "test_models", "test_flow", "test_levers",
         "test_train", "test_teacher", "test_data"]
FAST_SUITE = [f"tests/{name}.py" for name in FIRST] + sorted(
    f"tests/{p.name}" for p in (Path(__file__).parent).glob("test_*.py") if p.stem not in FIRST)
FAST_MARKERS = "not slow and not browser"


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str  # under src/textldm/
    old: str
    new: str
    why: str


MUTANTS = [
    # objectives: what the DiT is trained on
    Mutant('M01',
           'training/objectives/window.py',
           'x_t = interpolate(batch["noise"], batch["target"], batch["t"])',
           'x_t = interpolate(batch["target"], batch["noise"], batch["t"])',
           'DiT objective swaps noise and data in the path'),
    Mutant('M02',
           'training/objectives/window.py',
           'self.dit(x_t, batch["t"], **conditions, self_cond=estimate)',
           'self.dit(x_t, 1 - batch["t"], **conditions, self_cond=estimate)',
           'DiT is fed 1 - t instead of t'),
    Mutant('M03',
           'training/objectives/window.py',
           'conditions = {"context": self.dit.drop_context(batch["context"], drop),',
           'conditions = {"context": batch["context"],',
           'CFG condition dropout switched off in training'),
    Mutant('M04',
           'training/objectives/window.py',
           'drop = torch.rand(batch_size, generator=g) < d.p_uncond\n        noise = torch.randn(batch_size, d.target_max',
           'drop = torch.rand(batch_size, generator=g) >= d.p_uncond\n        noise = torch.randn(batch_size, d.target_max',
           'CFG condition dropout inverted (90% dropped)'),
    Mutant('M05',
           'training/objectives/window.py',
           'idx = torch.arange(context_max)[None] + (context_max - context_len)[:, None]',
           'idx = torch.arange(context_max)[None] + (context_max - context_len + 1)[:, None]',
           'context window shifted by one: the prompt loses its last token (the clamp keeps the target out)'),
    Mutant('M06',
           'training/objectives/window.py',
           'return batch["target_mask"]',
           'return torch.ones_like(batch["target_mask"])',
           'loss also on padded target positions'),
    Mutant('M07',
           'training/objectives/window.py',
           'x_t = interpolate(batch["noise"], batch["target"], batch["t"])',
           'batch = {**batch, "t": batch["t"].clamp(0.5, 1.0)}\n        x_t = interpolate(batch["noise"], batch["target"], batch["t"])',
           'training never sees the noisy half of the path'),
    # flow
    Mutant("M08", "diffusion/flow.py", "return x1 - x0", "return x0 - x1", "velocity target sign flipped"),
    Mutant("M09", "diffusion/flow.py", "return torch.sigmoid(mean + std * torch.randn(", "return torch.sigmoid(std * torch.randn(",
           "logit-normal timesteps ignore their mean"),
    Mutant("M10", "diffusion/flow.py", "grid = torch.cat([q[:1], torch.sigmoid(mean + std * normal_quantile), q[-1:]])",
           "grid = torch.cat([q[:1], torch.sigmoid(std * normal_quantile), q[-1:]])",
           "sampling grid ignores the timestep distribution's mean"),
    # sampling
    Mutant("M11", "diffusion/sampling.py", "x = x + (grid[i + 1] - grid[i]) * velocity(x, _at(grid[i], x))",
           "x = x + (grid[i + 1] - grid[i]) * velocity(x, _at(grid[i + 1], x))", "Euler evaluates at the step's end"),
    Mutant("M12", "diffusion/sampling.py", "x = x + h * 0.5 * (v0 + v1)", "x = x + h * v0", "Heun drops its corrector"),
    # dit
    Mutant('M13',
           'diffusion/guidance.py',
           'return v_uncond + scale * (v_cond - v_uncond)',
           'return v_cond + scale * (v_cond - v_uncond)',
           'CFG extrapolates from the wrong branch'),
    Mutant("M14", "models/dit.py", "return self.t_embedder(t)", "return self.t_embedder(torch.zeros_like(t))",
           "a t-conditioned DiT that ignores t"),
    Mutant("M15", "models/dit.py", "nn.init.zeros_(self.final.linear.weight)", "pass",
           "adaLN-Zero: output layer not zero-initialised"),
    Mutant("M16", "models/dit.py", "weights = context_mask.unsqueeze(-1).to(context.dtype)",
           "weights = torch.ones_like(context_mask).unsqueeze(-1).to(context.dtype)",
           "pooled prompt includes padding"),
    Mutant("M17", "models/dit.py", "positions = [torch.arange(Lc, device=device).expand(B, Lc), context_len + torch.arange(Lt, device=device)]",
           "positions = [torch.arange(Lc, device=device).expand(B, Lc), 0 * context_len + Lc + torch.arange(Lt, device=device)]",
           "target positions start after the padded, not the real, context"),
    # blocks
    Mutant("M19", "models/layers.py", "F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,",
           "F.scaled_dot_product_attention(q, k, v, attn_mask=None if attn_mask is None else ~attn_mask,",
           "GPU (SDPA) attention mask inverted"),
    Mutant("M20", "models/layers.py", "scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)",
           "scores = scores.masked_fill(attn_mask, torch.finfo(scores.dtype).min)", "CPU attention mask inverted"),
    Mutant("M21", "models/layers.py", "out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)",
           "out = torch.cat((x1 * cos + x2 * sin, x1 * sin + x2 * cos), dim=-1)", "RoPE is not a rotation"),
    # vae
    Mutant("M22", "training/objectives/vae.py", "z = mean + (0.5 * logvar).exp() * noise", "z = mean + logvar.exp() * noise",
           "reparameterisation uses the variance as the std"),
    Mutant("M24", "training/objectives/vae.py", "kl_weight=kl_weight_at(step, self.vae.cfg)", "kl_weight=self.vae.cfg.kl_weight",
           "KL warm-up never applied"),
    Mutant("M25", "training/objectives/vae.py", "return F.cosine_similarity(projected.float(), teacher.detach().float(), dim=-1, eps=1e-6)",
           "return F.cosine_similarity(projected.float(), teacher.float(), dim=-1, eps=1e-6)",
           "REPA gradient reaches the teacher"),
    Mutant("M26", "models/vae.py", "return (z - self.latent_mean) / self.latent_std", "return (z - self.latent_mean) / self.latent_std ** 2",
           "latent normalisation divides by the variance"),
    # pipeline
    Mutant('M27',
           'sampling/codec.py',
           'return self.vae.latents(ids, mask, self.normalize)',
           'return self.vae.latents(ids, mask, False)',
           'latent normalisation skipped when encoding prompts for sampling'),
    Mutant("M28", "sampling/codec.py", "            z = self.vae.denormalize(z)\n", "            pass\n",
           "latent normalisation skipped when decoding samples"),
    Mutant('M29',
           'diffusion/guidance.py',
           'return combine(v_cond, v_uncond, self.scale)',
           'return combine(v_cond, v_uncond, 1.0)',
           'CFG scale ignored when sampling'),
    Mutant('M30',
           'sampling/window.py',
           'contexts = [(prompt_ids[i] + out[i])[-d.context_max:] for i in active]',
           'contexts = [prompt_ids[i][-d.context_max:] for i in active]',
           'later windows are not conditioned on the text generated so far'),
    # train
    Mutant("M31", "training/loop.py", "        objective.load_state_dict(ema.full_state())\n", "        pass\n",
           "EMA weights never loaded at the end of training"),
    Mutant("M32", "training/loop.py", "torch._foreach_lerp_(shadows, lives, 1 - ", "torch._foreach_lerp_(shadows, lives, ",
           "EMA decay used as the update weight"),
    Mutant("M33", "training/loop.py", "(loss / accum).backward()", "loss.backward()",
           "gradient accumulation sums instead of averaging"),
    # evaluate
    Mutant('M34',
           'training/evaluate.py',
           'std = (s2 / n - mean.pow(2)).clamp_min(0).sqrt()',
           'std = (s2 / n - mean.pow(2)).clamp_min(0)',
           "latent 'std' computed as a variance"),
    Mutant('M35',
           'training/objectives/window.py',
           '("with_prompt", ~every), ("prompt_dropped", every)):',
           '("with_prompt", ~every), ("prompt_dropped", ~every)):',
           "the 'prompt dropped' loss keeps the prompt"),
    # the defects fixed with issue 12, broken again
    Mutant("M36", "training/loop.py", "return min(self.decay, (1 + n) / (10 + n))", "return self.decay",
           "EMA without warm-up (a short run saves ~its initial weights)"),
    Mutant('M37',
           'training/evaluate.py',
           'floor = max(STD_FLOOR * float(std.median()), 1e-6)',
           'floor = 1e-6',
           'absolute latent std floor: a collapsed channel is blown up to unit variance'),
    Mutant('M38',
           'sampling/run.py',
           'return noise_seed(self.settings.seed, window, self.first_index + (0 if self.shared_noise else row))',
           'return noise_seed(self.settings.seed, 0, self.first_index + (0 if self.shared_noise else row))',
           "every generation window reuses the first one's noise"),
    Mutant('M39',
           'sampling/run.py',
           'return noise_seed(self.settings.seed, window, self.first_index + (0 if self.shared_noise else row))',
           'return noise_seed(self.settings.seed, window, (0 if self.shared_noise else row))',
           "a prompt's noise depends on its place in the batch"),
    Mutant("M40", "models/lm.py", "return weight[:vocab_size]", "return weight",
           "padded teacher embedding matrix not sliced to the tokenizer"),
    Mutant("M41", "utils.py", 'data = b"\\x00".join(len(part).to_bytes(2, "little") + part for part in parts)',
           'data = str(sum(int.from_bytes(part, "little") for part in parts)).encode()',
           "seeding helper hashes the sum of its keys: (seed, window, row) tuples collide"),
    # levers (issue 13)
    Mutant('M42',
           'sampling/run.py',
           'estimate = clean_estimate(x_t, t, v)',
           'estimate = torch.zeros_like(x_t)',
           'self-conditioning never reads the previous estimate at sampling'),
    Mutant("M43", "diffusion/flow.py", "return x_t + (1 - t).view(", "return x_t + t.view(",
           "the clean-target estimate (self-conditioning in training, sampling and evaluation) uses t, not 1 - t"),
    Mutant("M44", "models/dit.py", "            nn.init.zeros_(self.self_cond_proj.weight)\n", "            pass\n",
           "self-conditioning input not zero-initialised"),
    Mutant('M45',
           'training/objectives/dit.py',
           '@torch.no_grad()\ndef first_pass_estimate(',
           'def first_pass_estimate(',
           "self-conditioning's first pass is back-propagated through"),
    Mutant("M50", "training/objectives/vae.py", "    if cfg.decoder_noise > 0 and vae.training:", "    if cfg.decoder_noise > 0:",
           "robust-decoder noise also applied at evaluation (reconstruction accuracy, decoding samples)"),
    Mutant("M51", "training/objectives/vae.py", "channel_std = mean[mask].std(0) if", "channel_std = mean.std(dim=(0, 1)) if",
           "robust-decoder noise scaled by a std that includes the padding"),
    Mutant("M52", "training/loop.py", "        used = max(time_used, _flops_used(cfg.max_flops, done, flops_per_step))",
           "        used = time_used", "a FLOPs budget neither stops the run nor drives the schedule"),
    # step callbacks (0.2.0): they may replace the latents or stop the sampler
    Mutant("M53", "diffusion/sampling.py", "    return out.to(x.dtype)", "    return x",
           "latents returned by a step callback are ignored"),
    Mutant('M54',
           'sampling/window.py',
           'while active and remaining > 0 and not run.stopped:\n            n = min(',
           'while active and remaining > 0:\n            n = min(',
           'STOP ends a window but the next window is still generated'),
    # block-causal mode (issue 20)
    Mutant('M55',
           'models/block_causal.py',
           'noisy_sees_clean = causal & ~same  # strictly earlier blocks',
           'noisy_sees_clean = causal & ~same & (blocks[None, :] < blocks[:, None] - 1)',
           'block mode: a noisy block cannot see the clean block right before it (the mask is one block off)'),
    Mutant('M56',
           'training/objectives/blocks.py',
           'per_window = 1 if d.blocks.t == "shared" else L // B',
           'per_window = 1',
           "block mode: one t shared by a window's blocks although per-block t is configured"),
    Mutant("M57", "models/block_causal.py", "            cache.frozen = False\n", "            cache.frozen = prefix is not None\n",
           "block mode: a stale prefix cache (generated blocks never join it)"),
    Mutant('M58',
           'models/block_causal.py',
           'x = torch.cat([self._embed_prefix(clean), self._embed_target(x_t, self_cond)], 1)',
           'x = torch.cat([self._embed_prefix(x_t), self._embed_target(x_t, self_cond)], 1)',
           'block mode: the prefix is not clean (training reads the noisy latents as the prefix)'),
    Mutant("M59", "models/vae.py", "        if self.cfg.encoder_block_size == 0:\n", "        if True:\n",
           "block-causal encoder option ignored: later tokens leak into earlier latents"),
    Mutant("M60", "models/block_causal.py", "clean_noisy_attn_mask(mask, B, None if drop is None or not empty else ~drop)",
           "clean_noisy_attn_mask(mask, B)", "block mode: CFG dropout (the empty prefix) never applied in training"),
    Mutant("M61", "models/block_causal.py", "rope = rope_angles(torch.arange(prefix.length, prefix.length + n, device=x_t.device),",
           "rope = rope_angles(torch.arange(n, device=x_t.device),",
           "block sampler: a new block's positions restart at 0 instead of following its prefix"),
    Mutant('M62',
           'sampling/blocks.py',
           'prefix = dit.extend_prefix(self.prefix, *self._prefix_input(dit, features, ones, self.guided))',
           'prefix = dit.extend_prefix(self.prefix, *self._prefix_input(dit, features, ones * False, self.guided))',
           'block sampler: the generated blocks join the prefix masked out (the DiT never reads its own text)'),
    # issue 21: the AR baseline, the CFG interval, REPA wiring, infilling, data, checkpoints, metrics, serving, export
    Mutant("M63", "training/objectives/ar.py", 'targets = batch["ids"][:, 1:].flatten()', 'targets = batch["ids"][:, :-1].flatten()',
           "AR baseline: targets not shifted (it learns to copy the current token)"),
    Mutant("M64", "models/ar.py", "step_ids, step_pos = token[:, None], mask.long().sum(1, keepdim=True) - 1",
           "step_ids, step_pos = token[:, None], mask.long().sum(1, keepdim=True)",
           "AR decoding: the KV-cached step's position is off by one"),
    Mutant("M65", "models/ar.py", "causal=attn_mask is None, cache=", "causal=False, cache=",
           "AR training attends to the future"),
    Mutant("M66", "families/textldm/train.py", "_frozen_teacher(cfg, device, cfg.teacher.layer if repa else 1)",
           "_frozen_teacher(cfg, device, -1 if repa else 1)", "the VAE stage aligns to the last teacher layer, not teacher.layer"),
    Mutant("M67", "training/objectives/vae.py", "loss = loss + cfg.repa_weight * (-cos)", "loss = loss + (-cos)",
           "REPA weight ignored (always 1)"),
    Mutant("M68", "families/textldm/train.py", "        vae.latent_mean.copy_(mean.to(device))\n        vae.latent_std.copy_(std.to(device))\n",
           "        pass\n", "the VAE's latent statistics are never measured: a saved model keeps mean 0 / std 1"),
    Mutant('M69',
           'sampling/window.py',
           'doubled["right"] = torch.cat([conditions["right"], dit.drop_context(conditions["right"], every)])',
           'doubled["right"] = torch.cat([conditions["right"], conditions["right"]])',
           'infilling CFG: the unconditional branch keeps the right context'),
    Mutant('M70',
           'training/objectives/window.py',
           '"right": None if right is None else self.dit.drop_context(right, drop)}',
           '"right": right}',
           'infilling training: dropped rows keep their right context'),
    Mutant('M71',
           'diffusion/guidance.py',
           'return self.on and self.min_t <= t <= self.max_t',
           'return self.on and not self.min_t <= t <= self.max_t',
           'CFG interval inverted (guided outside it)'),
    Mutant('M72',
           'diffusion/guidance.py',
           '            return evaluate(x_t, t, False)\n',
           '            return evaluate(torch.cat([x_t, x_t]), torch.cat([t, t]), True).chunk(2)[1] if self.on else \\\n                evaluate(x_t, t, False)\n',
           'outside the CFG interval the unconditional branch alone (scale 0), not the conditional'),
    Mutant("M73", "data/shards.py", "np.asarray(ids + [eot_id], dtype=dtype)", "np.asarray(ids, dtype=dtype)",
           "shards drop the end-of-text between documents (documents run together)"),
    Mutant("M74", "data/shards.py", "return h / 2**64 < val_fraction", "return h / 2**64 >= val_fraction",
           "the held-out split inverted (most documents held out)"),
    Mutant("M75", "data/shards.py", "usable = np.maximum(self.sizes - length, 0)", "usable = self.sizes",
           "windows may run past a shard's end"),
    Mutant("M76", "training/checkpoint.py", "return found[-1] if found else None", "return found[0] if found else None",
           "without a `latest` pointer, a resume starts from the oldest checkpoint"),
    Mutant('M77',
           'export.py',
           'state = module if isinstance(module, dict) else module.state_dict()',
           'state = module if isinstance(module, dict) else dict(module.named_parameters())',
           'a saved model is missing its buffers (the latent statistics)'),
    Mutant("M78", "serving/service.py", '"seed": req.seed,', '"seed": None,', "the server ignores a request's seed"),
    Mutant("M79", "serving/service.py", '"steps": req.steps,', '"steps": None,', "the server ignores a request's steps"),
    Mutant("M80", "evaluation/metrics.py", "scored[r, len(p): len(p) + len(c)] = True", "scored[r, : len(p)] = True",
           "gen-PPL scores the prompt's tokens, not the continuation's"),
    Mutant("M81", "evaluation/metrics.py", "continuation_nll(prompts[1:] + prompts[:1], continuations",
           "continuation_nll(prompts, continuations", "prompt binding scores after the own prompt twice (always 1)"),
    Mutant('M83',
           'sampling/blocks.py',
           'return torch.cat([features, null]), torch.cat([mask, null_mask])',
           'return torch.cat([null, features]), torch.cat([null_mask, mask])',
           "block mode: CFG extrapolates from the wrong branch (the sampler's [conditional ; unconditional] prefix halves swapped)"),
    Mutant('M84',
           'training/objectives/blocks.py',
           'drop = torch.rand(batch_size, generator=g) < d.p_uncond\n        noise = torch.randn(batch_size, L, C',
           'drop = torch.rand(batch_size, generator=g) >= d.p_uncond\n        noise = torch.randn(batch_size, L, C',
           'block mode: CFG dropout inverted (90% of windows without a prefix)'),
    Mutant("M82", "evaluation/metrics.py", "return math.exp((other - own) / tokens)", "return math.exp((own - other) / tokens)",
           "prompt binding inverted"),
    # issue 28: block mode on every path, usage counts, the error paths
    Mutant('M85',
           'sampling/blocks.py',
           'self.prefix.rows(torch.cat([index, index + n]) if self.guided else index)',
           'self.prefix.rows(torch.cat([index, index]) if self.guided else index)',
           'block mode: rows that end take the wrong unconditional prefixes with them'),
    Mutant('M86',
           'sampling/blocks.py',
           'take = min(d.blocks.size, remaining)',
           'take = d.blocks.size',
           'block mode: the stream and live view show the whole last block past the requested length'),
    Mutant('M87',
           'config.py',
           'return -(-self.context_max // self.blocks.size) * self.blocks.size',
           'return self.context_max',
           'block mode: the prompt is not left-padded to whole blocks (B not dividing dit.context_max)'),
    Mutant('M88',
           'runtime/perf.py',
           'conditions = 1 + length // dit.cfg.blocks.size',
           'conditions = length // dit.cfg.blocks.size',
           "block-mode training FLOPs miss the clean tokens' condition"),
    Mutant("M89", "serving/openai_api.py", "sum(len(ids) for ids in prompt_ids))", "sum(len(ids) for ids in rows))",
           "usage counts each prompt once per choice"),
    Mutant("M90", "serving/openai_api.py", "len(prompts) * req.n > self.service.limits.max_choices",
           "len(prompts) > self.service.limits.max_choices", "the choices limit ignores n"),
    Mutant('M91',
           'models/dit.py',
           'requires_grad=cfg.null_context == "learned" and reads_null)',
           'requires_grad=cfg.null_context == "learned")',
           'block mode trains the null vector its empty prefix never reads (DDP stops at step 2)'),
    Mutant("M92", "training/batches.py", '"token_count": token_count}', '"token_count": None}',
           "the VAE loss of each micro-batch / rank is its own token mean (a mean of means)"),
    Mutant("M93", "evaluation/lm_eval_model.py", "            offset += len(items)\n", "",
           "lm-eval: noise rows restart for each gen_kwargs group"),
    Mutant("M94", "families/ar/pipeline.py", "x = torch.tensor([ids[max(0, end - 1 - window): end - 1]]",
           "x = torch.tensor([ids[max(0, end - window): end - 1]]",
           "lm-eval: a long continuation's later pieces read one token of context too few"),
    Mutant("M95", "config.py", "if isinstance(value, float) and not math.isfinite(value):", "if False:",
           "nan and inf config values accepted"),
    Mutant("M96", "training/run.py", "    if not getattr(cfg, f\"{stage}_train\").checkpoint_every:\n",
           "    if False:\n", "--resume on a run that saves no checkpoint silently starts from step 0"),
    # the context-LM mode (dit.context_encoder): what the prefix is, and the LM's cache at sampling
    Mutant("M97", "training/objectives/context_lm.py", 'return batch["context"]', 'return torch.zeros_like(batch["context"])',
           "context-LM mode: the DiT is trained on a blank prefix (the LM's states never reach it)"),
    Mutant("M98", "models/lm.py", "positions = (mask.long().cumsum(1) - 1).clamp_min(0)[:, -ids.shape[1]:]",
           "positions = torch.arange(mask.shape[1] - ids.shape[1], mask.shape[1]).expand(ids.shape[0], -1)",
           "context LM at sampling: left padding shifts a short prompt's positions (states unlike training's)"),
    Mutant("M99", "sampling/context_lm.py", "        cache.batch_select_indices(index)\n", "",
           "context LM at sampling: rows that end stay in the LM's cache (the others read their neighbours' states)"),
    Mutant("M100", "training/objectives/context_lm.py", "ids, features = source.ids(idx), source.features(idx[rows])",
           "ids, features = source.ids(idx), source.features(idx.flip(0)[rows])",
           "precomputed context states: a window's tokens paired with another window's LM states"),
    Mutant("M101", "models/lm.py", "    if differ:\n", "    if differ > 2:\n",
           "context LM: a tokenizer with two ids swapped is accepted (the LM reads wrong ids)"),
    Mutant("M102", "evaluation/metrics.py", "    start = leading_special_ids(tok)", "    start = []",
           "judges that expect <bos> (Gemma, LLaMA) score prompts without it"),
    Mutant('M103',
           'training/objectives/context_lm.py',
           'open_or_build(stream, self.lm, self.lm.feature_name, c.layer,',
           "open_or_build(stream, self.lm, 'context:' + self.lm.feature_name, c.layer,",
           "context features keyed apart from the REPA teacher's cache: the same LM pass runs twice"),
    Mutant("M104", "evaluation/harness.py", '[("second_judge_", mcfg.second_judge)]',
           '[("second_judge_", mcfg.judge)]', "eval's second judge scored with the first judge's LM"),
    Mutant("M105", "sampling/run.py", "self.first_index + (0 if self.shared_noise else row))",
           "self.first_index + row)", "same-noise agreement continues each prompt from its own noise"),
    Mutant("M106", "training/loop.py",
           "guard_fired = not last and _budget_used(cfg.guard_minutes, 0.0, start, loss.device) >= 1.0",
           "guard_fired = False", "the wall-clock guard never stops a run"),
    Mutant("M107", "training/loop.py", 'group["lr"] = lr * group.get("lr_scale", 1.0)', 'group["lr"] = lr',
           "fine-tuned LM blocks step at the DiT's lr, not lr x dit.context_lr_scale"),
    Mutant('M108',
           'families/textldm/train.py',
           'TextLDMPipeline(cfg, vae_pipe.tokenizer, vae, dit, eot, parts=parts)',
           'TextLDMPipeline(cfg, vae_pipe.tokenizer, vae, dit, eot)',
           'the DiT stage saves a fresh copy of the context LM, not the blocks it trained'),
    Mutant("M109", "models/lm.py", "with torch.set_grad_enabled(trained and torch.is_grad_enabled()):",
           "with torch.no_grad():", "the context LM's trained blocks get no gradient"),
    # self-conditioning in block mode
    Mutant("M110", "sampling/blocks.py",
           "self_condition = torch.zeros_like(x) if self.dit.self_cond_proj is not None else None",
           "self_condition = None", "block sampling never feeds a self-conditioning DiT its estimate"),
    Mutant("M111", "training/objectives/blocks.py", "estimate = first_pass_estimate(velocity, x_t, per_token, self_cond)",
           "estimate = torch.zeros_like(x_t)", "block-mode training skips the first pass: the estimate is always zeros"),
    Mutant('M112',
           'training/objectives/blocks.py',
           'batch["self_cond"] = self_condition_rows(d, batch_size, g, rows, device)',
           'batch["self_cond"] = torch.zeros(batch_size, dtype=torch.bool)[rows].to(device)',
           'block batches never choose a window to self-condition'),
    Mutant('M113',
           'training/objectives/blocks.py',
           'err = self.errors(batch, drop, every)',
           'err = self.errors(batch, drop)',
           "block mode's held-out errors read no self-conditioning estimate (sampling does)"),
    Mutant('M114',
           'families/textldm/pipeline.py',
           'NOT_DIFFUSION = {"length", "seed", "temperature", "top_p", "top_k", "projection"}',
           'NOT_DIFFUSION = {"length", "seed", "temperature", "top_p", "top_k", "projection", "noise_scale", "grid"}',
           "textldm eval samples with each model's own noise scale and grid, not the ones results.json records"),
    Mutant("M115", "training/objectives/context_lm.py", "if passes > MAX_PASSES:", "if passes > 10 * MAX_PASSES:",
           "training reads the precomputed windows past the measured overfit without a warning"),
    Mutant("M116", "models/lm.py", "normed = output.last_hidden_state.float()",
           "normed = captured.float()",
           "the context LM's last layer is its raw block output (massive channels), not the final-normed state"),
    Mutant("M117", "models/lm.py", "p = top.values.float().softmax(-1)", "p = top.values.float().sigmoid()",
           "the LM's prediction weighs its top tokens by a sigmoid, not their renormalized softmax"),
    Mutant("M118", "models/lm.py", "(f\"/top{prediction_top_k}\" if prediction_top_k else \"\")", "\"\"",
           "features with and without the LM's prediction share a cache key"),
    Mutant("M119", "data/features.py", 'or cache.meta["hidden"] != teacher.hidden_size', "",
           "a precomputed feature folder of another width is read without a check"),
    Mutant("M120", "sampling/context_lm.py", "return features[:, -ids.shape[1]:], (cache, read_mask, features",
           "return self.lm.states(ids, mask)[0], (cache, read_mask, features",
           "context LM at sampling: sample.lm_history reads the history but the DiT gets the window's states alone"),
    Mutant("M121", "sampling/context_lm.py", "return max(d.context_max, s.lm_history)", "return d.context_max",
           "prompts cut at dit.context_max whatever sample.lm_history: the LM never sees the longer history"),
    Mutant('M122',
           'families/textldm/pipeline.py',
           'return self.prompt_tokens(sample)',
           'return self.config.dit.context_max',
           "the harness cuts benchmark prompts at the DiT's window, ignoring the evaluation's sample.lm_history"),
    Mutant("M123", "sampling/codec.py", "ids[:, 0] = (logits[:, 0].float() + prior).argmax(-1)",
           "ids[:, -1] = (logits[:, -1].float() + prior).argmax(-1)",
           "sample.lm_prior: the LM's next-token prior is added at a block's last position, not its first"),
    Mutant("M124", "sampling/context_lm.py", "return features, (cache, read_mask, features[:, -1])",
           "return features, (cache, read_mask, features[:, 0])",
           "sample.lm_prior: after a committed block the prior reads the LM's state of its first token, not its last"),
    Mutant("M125", "sampling/context_lm.py", "return self.prior_weight * self.lm.next_token_logprobs(",
           "return self.lm.next_token_logprobs(",
           "sample.lm_prior: the weight is ignored (the LM's log-probabilities added at weight 1)"),
    # issue 45: what users and published numbers rely on (tests/test_contracts.py)
    Mutant("M126", "serving/openai_api.py", '"_tokens": len(tokenizer(text, add_special_tokens=False)["input_ids"])}',
           '"_tokens": len(ids)}',
           "OpenAI usage.completion_tokens counts the generated tokens, those cut after a stop sequence included"),
    Mutant("M127", "utils.py", 'return (text[:min(hits)], "stop") if hits else (text, None)',
           'return (text[:hits[0]], "stop") if hits else (text, None)',
           "stop sequences: the first one listed that occurs ends the text, not the earliest in the text"),
    Mutant("M128", "serving/app.py", 'token = given[7:] if given[:7].lower() == b"bearer " else b""',
           'token = given[-len(self.key):] if b"bearer" in given.lower() else b""',
           "API key: any Authorization header that mentions bearer and ends with the key is accepted"),
    Mutant('M129',
           'families/ar/pipeline.py',
           's.temperature, s.top_k, s.top_p, s.seed)',
           's.temperature, s.top_k, s.top_p, None)',
           "OpenAI: a request's seed does not reach the AR baseline (its sampled completions ignore it)"),
    Mutant("M130", "families/ar/pipeline.py", "greedy = greedy and bool((logp.argmax(-1) == target).all())",
           "greedy = greedy and bool((logp.argmax(-1) == target).any())",
           "lm-eval: is_greedy when any continuation token is the argmax, not every one"),
    Mutant("M131", "evaluation/metrics.py", "rows.append((start + p_ids[len(p_ids) - min(len(p_ids), room):], c_ids))",
           "rows.append((start + p_ids[:room], c_ids))",
           "the judge reads a long prompt's first tokens, not those right before the continuation"),
    Mutant('M132',
           'training/objectives/blocks.py',
           'per_token = t.repeat_interleave(self.dit.cfg.blocks.size, dim=1)',
           'per_token = t.repeat(1, self.dit.cfg.blocks.size)',
           "block mode: positions are noised with another block's time than the one their block is conditioned on"),
    Mutant("M133", "models/block_causal.py", "return self.condition(torch.ones(n, device=device))",
           "return self.condition(torch.zeros(n, device=device))",
           "block mode: the clean prefix is conditioned on the noise end of the path (t = 0), not the data end"),
    Mutant("M134", "training/objectives/window.py", "target_mask = torch.arange(target.shape[1])[None] < target_len[:, None]",
           "target_mask = torch.arange(target.shape[1])[None] <= target_len[:, None]",
           "full window: one padding position past each target's end enters the loss"),
    Mutant("M135", "training/objectives/blocks.py", 'return batch["mask"]\n', 'return torch.ones_like(batch["mask"])\n',
           "block mode: the left padding of a window's first block enters the loss"),
    Mutant("M136", "evaluation/harness.py", "jobs.append((i, prompt, max(1, min(n_ref, cap))))",
           "jobs.append((i, prompt, cap))",
           "the harness continues every item by the model's cap, not by the reference's length (the oracle length)"),
    # issue 46: the family registry
    Mutant("M137", "families/__init__.py", "return family(model_type(folder)).pipeline.from_pretrained(",
           "return family('textldm').pipeline.from_pretrained(",
           "load_pipeline loads every folder as a TextLDM model, whatever family its config.json names"),
    Mutant("M138", "families/__init__.py", "return [f.folder for f in FAMILIES.values() if f.saves and f.folder]",
           "return [f.folder for f in reversed(FAMILIES.values()) if f.saves and f.folder]",
           "a run folder holding both loads its AR baseline before its TextLDM model"),
    # issue 47: the masked-diffusion baselines (MDLM, BD3-LM)
    Mutant("M139", "diffusion/masking.py", "    return 1.0 / t\n", "    return torch.ones_like(t)\n",
           "masked diffusion: the NELBO's 1/t weight dropped (a plain masked cross-entropy)"),
    Mutant("M140", "diffusion/masking.py", "        u = (u / n + torch.arange(n) / n) % 1.0",
           "        u = u",
           "masked diffusion: the times are i.i.d., not stratified over the batch (antithetic sampling off)"),
    Mutant("M141", "training/objectives/masked.py",
           "per_token = t.repeat_interleave(ids.shape[1] // t.shape[1], dim=1)",
           "per_token = t.repeat(1, ids.shape[1] // t.shape[1])",
           "BD3-LM: a token is masked at another block's time than its own"),
    Mutant("M142", "models/masked.py", "        return self.norm(x[:, L:])", "        return self.norm(x[:, :L])",
           "BD3-LM: the logits come from the clean copy (which sees its own block's clean tokens)"),
    Mutant("M143", "diffusion/masking.py",
           "unmask = torch.rand(x_t.shape, generator=generator, dtype=torch.float64).to(x_t.device) < (t - s) / t",
           "unmask = torch.rand(x_t.shape, generator=generator, dtype=torch.float64).to(x_t.device) < (t - s)",
           "masked sampling: a position unmasks with probability t - s, not (t - s) / t"),
    Mutant("M144", "diffusion/masking.py", "    logits = logits.double()\n", "    logits = logits.float()\n",
           "masked sampling: categorical draws from float32 probabilities"),
    Mutant("M145", "sampling/masked.py", "            stale[j] = not torch.equal(new, x[j, start:])",
           "            stale[j] = False",
           "the caching sampler keeps a row's logits after its tokens changed"),
    Mutant("M146", "sampling/masked.py", "            n = self.window - self.context  # the trained layout",
           "            n = self.window - self.context - 1  # the trained layout",
           "MDLM sampling: the window is not the trained one (one position short)"),
    Mutant("M147", "models/masked.py",
           "x, rope, attn = self.embed(x_t), self._rope(torch.arange(L, device=device)), padding_attn_mask(key_mask)",
           "x, rope, attn = self.embed(x_t), self._rope(torch.arange(L, device=device)), None",
           "MDLM: left padding is attended to (the padding mask ignored)"),
    Mutant("M148", "families/masked/pipeline.py", "        uniforms[:, :start] = 1.0  # the context is never masked",
           "        uniforms[:, :start] = uniforms[:, :start]  # the context is never masked",
           "the likelihood bound masks (and scores) the context too"),
    Mutant("M149", "evaluation/harness.py", "total, tokens, exact = total + nll, tokens + len(continuation), exact and is_exact",
           "total, tokens, exact = total + nll, tokens + len(continuation), exact or is_exact",
           "textldm eval reports a masked model's bound as an exact likelihood"),
    Mutant("M150", "runtime/perf.py", "    tokens = length if model.block == 0 else 2 * length",
           "    tokens = length",
           "BD3-LM's counted FLOPs miss its [clean ; noisy] pass's second half"),
    Mutant("M151", "diffusion/masking.py", "    masked = uniforms < t\n", "    masked = uniforms > t\n",
           "masked diffusion: a token is masked with probability 1 - t"),
    # issue 48: SSD-LM
    Mutant("M152", "diffusion/simplex.py", "    return a.sqrt() * w0 + (1 - a).sqrt() * k * noise",
           "    return (1 - a).sqrt() * w0 + a.sqrt() * k * noise",
           "SSD-LM: signal and noise swapped in the forward process"),
    Mutant("M153", "diffusion/simplex.py", "    return torch.where(inside, k, -k).to(logits.dtype)",
           "    return torch.where(inside, -k, k).to(logits.dtype)",
           "SSD-LM sampling: the projection puts +K outside the nucleus"),
    Mutant("M154", "models/ssd.py",
           "block = block + self.time((t.float() / self.cfg.diffusion_steps).view(N, 1, 1).to(block.dtype))",
           "block = block + self.time(torch.zeros(N, 1, 1, device=block.device, dtype=block.dtype))",
           "SSD-LM: the network is not told the time"),
    Mutant("M155", "sampling/ssd.py",
           "            w = a ** 0.5 * projection(logits) + (1 - a) ** 0.5 * K * noise()",
           "            w = projection(logits)",
           "SSD-LM sampling: the projection is not re-noised to the next time"),
    Mutant("M156", "training/objectives/ssd.py", "            context[i, C - c[i]:] = ids[i, : c[i]]",
           "            context[i, C - c[i]:] = ids[i, 1: c[i] + 1]",
           "SSD-LM: the context is shifted by one (the block's first token leaks into it)"),
    Mutant("M157", "families/masked/pipeline.py", "        return min(requested, self.window - self.prompt_tokens())",
           "        return requested",
           "the masked baselines are scored on continuations of several windows (longer than the other families')"),
    Mutant("M158", "families/ssd/pipeline.py", "        return min(requested, self.sampler.window // 2)",
           "        return min(requested, self.sampler.window)",
           "SSD-LM is scored on continuations twice as long as the AR baseline's"),
    Mutant("M159", "diffusion/simplex.py", "if n == probs.shape[-1] or bool((before[..., -1] >= top_p).all()):",
           "if n == probs.shape[-1] or bool((before[..., -1] >= top_p).any()):",
           "SSD-LM's projection stops widening once any row's nucleus fits (a flatter row's is cut short)"),
    Mutant("M160", "diffusion/simplex.py", "        n = min(4 * n, probs.shape[-1])", "        break",
           "SSD-LM's projection ranks only the top 1024 tokens, however wide the nucleus"),
    # SSD-LM's sampling projection (the authors' alternative decode)
    Mutant("M161", "diffusion/simplex.py", "    mass = torch.where(inside, top, 0.0).cumsum(-1)",
           "    mass = top.cumsum(-1)",
           "SSD-LM's sampling projection draws from the ranked tokens past the nucleus too"),
    Mutant("M162", "sampling/ssd.py", '            if s.projection == "multi-hot":', "            if True:",
           "SSD-LM's sampler ignores sample.projection (always multi-hot)"),
    Mutant("M163", "diffusion/simplex.py",
           "    pick = torch.searchsorted(mass, (uniforms.double() * mass[..., -1])[..., None], right=True)",
           "    pick = torch.zeros_like(mass[..., :1], dtype=torch.long)",
           "SSD-LM's sampling projection always takes the top token (greedy, not a draw)"),
]



def export_tree(rev: str | None, dest: Path) -> None:
    """The source, tests and project files of `rev` (a git revision) or of the working tree, into `dest`."""
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    # every file git would see (tracked, or new and not ignored): the docs' tests read README, docs/ and the files
    # they name (tests/test_docs.py), bench/'s arithmetic is tested (tests/test_bench.py)
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def failure_kind(line: str) -> str:
    """A pytest short-summary line ("FAILED test - ExceptionType: message") -> "assertion" when a test's check
    failed, "crash" when the code raised something else first."""
    reason = line.split(" - ", 1)[1] if " - " in line else ""
    if not reason:  # an ERROR line without a reason: collection or a fixture broke
        return "crash" if line.startswith("ERROR") else "assertion"
    return "assertion" if reason.startswith(("AssertionError", "assert ", "Failed:")) else "crash"


def run_suite(tree: Path, tests: list[str], timeout: float) -> tuple[str, str, float]:
    """("passed" | "failed" | "timeout", the first failing test and how it failed, or the last output line, s)."""
    present = [t for t in tests if (tree / t.split("::")[0]).exists()]
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", FAST_MARKERS,
                               *present],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"over {timeout:.0f} s", time.time() - start
    lines = proc.stdout.strip().splitlines()
    failed = [f"{line.split(' ')[1]} ({failure_kind(line)})" for line in lines if line.startswith(("FAILED ", "ERROR "))]
    detail = failed[0] if failed else (lines[-1] if lines else proc.stderr.strip()[-200:])
    return ("passed" if proc.returncode == 0 else "failed"), detail, time.time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="git revision to test (default: the working tree)")
    parser.add_argument("--only", help="comma-separated mutant ids")
    parser.add_argument("--tests", default=",".join(FAST_SUITE),
                        help="comma-separated test files or ids (default: the fast suite, every test not slow/browser)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant run (a timeout counts as killed)")
    parser.add_argument("--out", help="also write the results as a markdown table here")
    args = parser.parse_args()
    tests = args.tests.split(",")
    chosen = [m for m in MUTANTS if not args.only or m.id in args.only.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="textldm-mutation-") as tmp:
        tree = Path(tmp)
        export_tree(args.rev, tree)
        status, detail, seconds = run_suite(tree, tests, args.timeout)
        print(f"unmutated suite: {status} in {seconds:.0f} s ({detail})", flush=True)
        if status != "passed":
            print("the unmutated suite must pass first", file=sys.stderr)
            return 1
        for m in chosen:
            path = tree / "src" / "textldm" / m.file
            original = path.read_text()
            if original.count(m.old) != 1:
                rows.append((m, "n/a", f"code not found once in {m.file}", 0.0))
                print(f"{m.id} n/a      {m.why}", flush=True)
                continue
            path.write_text(original.replace(m.old, m.new))
            try:
                status, detail, seconds = run_suite(tree, tests, args.timeout)
            finally:
                path.write_text(original)
            result = "survived" if status == "passed" else "killed"
            rows.append((m, result, detail if result == "killed" else "", seconds))
            print(f"{m.id} {result:8s} {seconds:5.0f} s  {m.why}  {detail if result == 'killed' else ''}", flush=True)
    applicable = [r for r in rows if r[1] != "n/a"]
    killed = sum(r[1] == "killed" for r in applicable)
    summary = f"mutation score: {killed} / {len(applicable)} killed" + (
        f" ({len(rows) - len(applicable)} not applicable to this tree)" if len(applicable) < len(rows) else "")
    print(summary)
    if args.out:
        table = ["| id | file | change | result | caught by |", "|---|---|---|---|---|"]
        table += [f"| {m.id} | {m.file} | {m.why} | {result} | `{detail}` |" if detail else
                  f"| {m.id} | {m.file} | {m.why} | {result} | |" for m, result, detail, _ in rows]
        Path(args.out).write_text(f"{summary} (tests: {', '.join(tests)}; tree: {args.rev or 'working tree'})\n\n"
                                  + "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How a trained TextDiT generates text: one sampler per generation mode (`window.WindowSampler`, the paper's;
`blocks.BlockSampler`, block-causal; `context_lm.ContextLMSampler`, blocks on a pretrained LM's states), each a loop
over typed parts - the denoiser (the DiT), the latent codec (`codec.LatentCodec`: the VAE, normalisation, end-of-text,
precision) and one call's settings (`run.SamplingRun`) - that never calls back into the pipeline. Training does not
import this package, nor this package training.
"""
from textldm.sampling.blocks import BlockSampler, BlockState, LatentPrefix
from textldm.sampling.codec import LatentCodec
from textldm.sampling.context_lm import ContextLMSampler, LMPrefix
from textldm.sampling.run import Sampler, SamplingRun, noise_seed, start_noise
from textldm.sampling.window import WindowSampler

__all__ = ["BlockSampler", "BlockState", "ContextLMSampler", "LMPrefix", "LatentCodec", "LatentPrefix", "Sampler",
           "SamplingRun", "WindowSampler", "noise_seed", "start_noise"]

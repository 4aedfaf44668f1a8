"""The networks: Transformer block, VAE, DiT, AR baseline, the frozen teacher."""

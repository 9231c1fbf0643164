"""The small FLUX-shaped model family trained on the synthetic world (tokenizers, text encoders, VAE,
transformer), assembled as a diffusers FLUX folder that loads through the same code as FLUX.1-dev."""

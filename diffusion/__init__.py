"""Denoising diffusion (DDPM) training as plain PyTorch, with Ray job entry points (issue 4)."""

"""Denoising diffusion (DDPM) training as plain PyTorch; job.py is what the core runs as a Ray task."""

"""Benchmarks of diffusionkit against diffusers and denoising-diffusion-pytorch (not installed with the package)."""

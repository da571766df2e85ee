"""Score networks."""

from fpjax.learn.models.unet import DDPM_CIFAR10, UNet, UNetConfig

__all__ = ["DDPM_CIFAR10", "UNet", "UNetConfig"]

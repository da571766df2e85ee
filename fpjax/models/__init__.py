"""Score networks."""

from fpjax.models.unet import DDPM_CIFAR10, UNet, UNetConfig

__all__ = ["DDPM_CIFAR10", "UNet", "UNetConfig"]

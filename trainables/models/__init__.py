"""Model families; importing this package registers each of them (explicit imports, no filesystem scan)."""

from celltune.trainables.models import u_se_resnet, unet, xbnet

__all__ = ["u_se_resnet", "unet", "xbnet"]

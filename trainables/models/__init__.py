"""Model families; importing this package registers each of them (explicit imports, no filesystem scan)."""

from celltune.trainables.models import convlstm_unet, ensemble, u_se_resnet, unet, xbnet

__all__ = ["convlstm_unet", "ensemble", "u_se_resnet", "unet", "xbnet"]

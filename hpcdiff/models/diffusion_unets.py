"""The UNet backbones under the reference's module name (``physicsnemo.models.diffusion_unets``)."""

from hpcdiff.models.song_unet import SongUNet
from hpcdiff.models.song_unet_pos import SongUNetPosEmbd

__all__ = ["SongUNet", "SongUNetPosEmbd"]

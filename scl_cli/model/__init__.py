"""The SCL model: `from scl_cli.model import SCLModel`."""

from scl_cli.model.fusion import FusionOutput
from scl_cli.model.scl_model import SCLModel
from scl_cli.model.vision import ImageEncoding

__all__ = ["FusionOutput", "ImageEncoding", "SCLModel"]

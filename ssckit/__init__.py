"""ssckit: camera-based 3D semantic scene completion (Symphonies, VLScene) in pure PyTorch."""
from ssckit._compat import ensure_torchvision

TORCHVISION_STATUS = ensure_torchvision()  # before anything imports timm / torchmetrics / lightning

__version__ = "0.1.0"

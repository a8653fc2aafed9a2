"""Scene decoders."""
from ssckit.models.decoders.symphonies import (
    SymphoniesDecoder,
    SymphoniesGeometry,
    SymphoniesLayer,
    convert_official_decoder_state_dict,
    official_decoder_key,
)

__all__ = [
    "SymphoniesDecoder",
    "SymphoniesGeometry",
    "SymphoniesLayer",
    "convert_official_decoder_state_dict",
    "official_decoder_key",
]

"""Former name of ``llava.model.splice`` (the splice of visual tokens into the LLM's inputs), kept so that code
importing ``llava.model.multimodal_inputs`` keeps working. New code imports ``llava.model.splice``."""

from llava.model.splice import (
    ImageTokenLayout,
    SpliceOutput,
    pad_features,
    splice_image_features,
    split_packed_features,
    split_padded_features,
)

__all__ = [
    "ImageTokenLayout",
    "SpliceOutput",
    "pad_features",
    "splice_image_features",
    "split_packed_features",
    "split_padded_features",
]

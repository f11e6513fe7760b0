"""The assistant: the multimodal model, its processor, medical image I/O, rendering, the ``medp`` CLI.

Public API::

    MedPConfig, MedPForConditionalGeneration                            # tower + projectors + any causal LM
    MedPProcessor, PromptError, IGNORE_INDEX                            # chat + image + regions -> inputs, labels
    from_parts, save_assistant, load_assistant                          # assemble / save / load

    load_image, load_dicom, ImageLoadError, WINDOW_PRESETS, LoadedImage   # DICOM / PNG / JPEG -> [0, 1]
    draw_regions, region_colour                                         # regions drawn on an image
    encode_and_report, plot_report                                      # what the tower sees, as table and figure
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .build import from_parts, load_assistant, save_assistant
from .configuration import MedPConfig
from .image_io import WINDOW_PRESETS, ImageLoadError, LoadedImage, load_dicom, load_image
from .region_report import encode_and_report, plot_report
from .modeling import MedPForConditionalGeneration
from .processing import IGNORE_INDEX, MedPProcessor, PromptError
from .render import draw_regions, region_colour

AutoConfig.register(MedPConfig.model_type, MedPConfig, exist_ok=True)
AutoModel.register(MedPConfig, MedPForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MedPConfig, MedPForConditionalGeneration, exist_ok=True)

__all__ = [
    "IGNORE_INDEX", "ImageLoadError", "LoadedImage", "MedPConfig", "MedPForConditionalGeneration", "MedPProcessor",
    "PromptError", "WINDOW_PRESETS", "draw_regions", "encode_and_report", "from_parts", "load_assistant",
    "load_dicom", "load_image", "plot_report", "region_colour", "save_assistant",
]

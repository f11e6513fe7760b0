"""The assistant: the multimodal model, its processor, chat and generation, serving (vLLM).

Public API::

    MedPConfig, MedPForConditionalGeneration                            # tower + projectors + any causal LM
    MedPProcessor, IGNORE_INDEX                                         # chat + image + regions -> inputs, labels
    from_parts, save_assistant, load_assistant                          # assemble / save / load
    encode_and_report, plot_report                                      # what the tower sees, as table and figure

Image I/O, rendering, the grounding format and the prompt rules are torch-free, in :mod:`medp_base`.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

from vision_tower import RegionImageProcessor

from .build import from_parts, load_assistant, save_assistant
from .configuration import MedPConfig
from .modeling import MedPForConditionalGeneration
from .processing import IGNORE_INDEX, MedPProcessor
from .region_report import encode_and_report, plot_report

AutoConfig.register(MedPConfig.model_type, MedPConfig, exist_ok=True)
AutoModel.register(MedPConfig, MedPForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MedPConfig, MedPForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(MedPConfig, image_processor_classes={"pil": RegionImageProcessor}, exist_ok=True)
AutoProcessor.register(MedPConfig, MedPProcessor, exist_ok=True)

__all__ = [
    "IGNORE_INDEX", "MedPConfig", "MedPForConditionalGeneration", "MedPProcessor", "encode_and_report", "from_parts",
    "load_assistant", "plot_report", "save_assistant",
]

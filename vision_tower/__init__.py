"""MedP-CLIP's region-aware vision tower: region prompts, pre-processing, the ViT, MedP-CLIP.

Public API::

    parse_regions, region_from_json, RegionError        # region JSON -> validated prompts
    Letterbox, region_coverage                          # geometry and per-patch coverage
    RegionImageProcessor, RegionInputs                  # images + regions -> tensors
    MedPVisionConfig, MedPVisionTower                   # the tower (forward / encode_image / encode_regions)
    from_hf_vision, efficientnet_hybrid                 # build from CLIP/SigLIP or EfficientNet-Lite0
    MedPCLIPConfig, MedPCLIPModel, MedPCLIP             # contrastive model and zero-shot classify
"""

from transformers import AutoConfig, AutoModel

from .backbones import efficientnet_hybrid, from_hf_vision
from .clip_model import MedPCLIP, MedPCLIPConfig, MedPCLIPModel, MedPCLIPProcessor, default_text_tower_path
from .configuration import MedPVisionConfig
from .inputs import RegionInputs, build_region_inputs
from .letterbox import Letterbox
from .modeling import ImageCache, MedPVisionOutput, MedPVisionTower
from .processing import RegionImageProcessor, VisionInputs
from .rasterize import region_coverage
from .regions import (
    BoxPrompt,
    MaskPrompt,
    PointsPrompt,
    PolygonPrompt,
    RegionError,
    RegionPrompt,
    ScribblePrompt,
    parse_regions,
    region_from_json,
)
from .rle import decode_rle, encode_rle

AutoConfig.register(MedPVisionConfig.model_type, MedPVisionConfig, exist_ok=True)
AutoConfig.register(MedPCLIPConfig.model_type, MedPCLIPConfig, exist_ok=True)
AutoModel.register(MedPVisionConfig, MedPVisionTower, exist_ok=True)
AutoModel.register(MedPCLIPConfig, MedPCLIPModel, exist_ok=True)

__all__ = [
    "BoxPrompt", "ImageCache", "Letterbox", "MaskPrompt", "MedPCLIP", "MedPCLIPConfig", "MedPCLIPModel",
    "MedPCLIPProcessor", "MedPVisionConfig", "MedPVisionOutput", "MedPVisionTower", "PointsPrompt",
    "PolygonPrompt", "RegionError", "RegionImageProcessor", "RegionInputs", "RegionPrompt", "ScribblePrompt",
    "VisionInputs", "build_region_inputs", "decode_rle", "default_text_tower_path", "efficientnet_hybrid",
    "encode_rle", "from_hf_vision", "parse_regions", "region_coverage", "region_from_json",
]

"""MedP-CLIP's region-aware vision tower: pre-processing into tensors, the ViT, MedP-CLIP. (Region
JSON, its validation and geometry are torch-free, in :mod:`medp_base`.)

Public API::

    RegionImageProcessor, RegionInputs                  # images + regions -> tensors
    mask_pool                                           # coverage-weighted mean of patch features
    MedPVisionConfig, MedPVisionTower                   # the tower (forward / encode_image / encode_regions)
    from_hf_vision, efficientnet_hybrid                 # build from CLIP/SigLIP or EfficientNet-Lite0
    MedPCLIPConfig, MedPCLIPModel, MedPCLIP             # contrastive model and zero-shot classify
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .backbones import efficientnet_hybrid, from_hf_vision
from .clip_model import MedPCLIP, MedPCLIPConfig, MedPCLIPModel, MedPCLIPProcessor, default_text_tower_path
from .configuration import MedPVisionConfig
from .inputs import RegionInputs, build_region_inputs, mask_pool
from .modeling import ImageCache, MedPVisionOutput, MedPVisionTower
from .processing import RegionImageProcessor, VisionInputs

AutoConfig.register(MedPVisionConfig.model_type, MedPVisionConfig, exist_ok=True)
AutoConfig.register(MedPCLIPConfig.model_type, MedPCLIPConfig, exist_ok=True)
AutoModel.register(MedPVisionConfig, MedPVisionTower, exist_ok=True)
AutoImageProcessor.register(MedPVisionConfig, image_processor_classes={"pil": RegionImageProcessor}, exist_ok=True)
AutoModel.register(MedPCLIPConfig, MedPCLIPModel, exist_ok=True)

__all__ = [
    "ImageCache", "MedPCLIP", "MedPCLIPConfig", "MedPCLIPModel", "MedPCLIPProcessor", "MedPVisionConfig",
    "MedPVisionOutput", "MedPVisionTower", "RegionImageProcessor", "RegionInputs", "VisionInputs",
    "build_region_inputs", "default_text_tower_path", "efficientnet_hybrid", "from_hf_vision", "mask_pool",
]

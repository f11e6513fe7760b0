"""Configuration of the region-aware vision tower (MedP-CLIP's image encoder)."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

from .attention import BACKENDS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_mask_decoder(settings: dict | None, stem: str) -> None:
    """Mask-decoder settings that fit a tower with ``stem``."""
    if settings is not None and settings.get("use_stem_features") and stem != "efficientnet_lite0":
        raise ValueError("the mask decoder's use_stem_features needs the efficientnet_lite0 stem")


class MedPVisionConfig(PretrainedConfig):
    r"""A ViT whose attention takes region prompts (DESIGN.md §3).

    Args:
        stem: ``"patch"`` (a strided convolution, as CLIP/SigLIP) or ``"efficientnet_lite0"`` (the
            ImageNet EfficientNet-Lite0 up to stride 16, then a 1x1 projection; ``patch_size`` must be 16).
        patch_bias: whether the patch convolution has a bias (SigLIP yes, CLIP no).
        use_cls_token: prepend a CLS token (CLIP) or not (SigLIP).
        pre_layernorm: LayerNorm on the embeddings before the blocks (CLIP).
        pooling: ``"cls"``: image embedding = post-LN(CLS), patch features un-normalised (CLIP);
            ``"map"``: post-LN on every token and multi-head attention pooling (SigLIP).
        region_bias_init: initial value of every β[l, h], the weight of a region's coverage in its
            token's attention logits.
        max_regions: the most region prompts per image.
        point_radius: radius in original pixels of the disc drawn for a clicked point.
        image_mean, image_std: RGB normalisation of the letterboxed image, in [0, 1] units.
        attention_backend: ``"auto"`` (the fused Triton kernel on CUDA when it supports the shapes,
            matmul-softmax-matmul in bf16 CPU training, else the PyTorch reference with SDPA) |
            ``"reference"`` | ``"eager"`` | ``"fused"`` (:func:`vision_tower.attention.choose_backend`); the
            environment variable ``MEDP_ATTENTION_BACKEND`` overrides it.
        mask_decoder: settings of the interactive-segmentation decoder
            (:class:`vision_tower.mask_decoder.MaskDecoderSettings` as a dict), or None for none.
        grounding_kinds: the ``<ref>`` phrases of the grounding head
            (:class:`vision_tower.grounding_head.GroundingHead`), or None for no head.
    """

    model_type = "medp_vision"

    def __init__(
        self,
        hidden_size: int = 768,
        intermediate_size: int = 3072,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_act: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        stem: str = "patch",
        patch_bias: bool = False,
        use_cls_token: bool = True,
        pre_layernorm: bool = True,
        pooling: str = "cls",
        region_bias_init: float = 1.0,
        max_regions: int = 16,
        point_radius: float = 6.0,
        image_mean: tuple[float, float, float] = CLIP_MEAN,
        image_std: tuple[float, float, float] = CLIP_STD,
        attention_backend: str = "auto",
        initializer_range: float = 0.02,
        mask_decoder: dict | None = None,
        grounding_kinds: list[str] | None = None,
        **kwargs,
    ):
        if stem not in ("patch", "efficientnet_lite0"):
            raise ValueError(f"stem must be 'patch' or 'efficientnet_lite0', got {stem!r}")
        if stem == "efficientnet_lite0" and patch_size != 16:
            raise ValueError("the EfficientNet-Lite0 stem has stride 16: patch_size must be 16")
        if pooling not in ("cls", "map"):
            raise ValueError(f"pooling must be 'cls' or 'map', got {pooling!r}")
        if pooling == "cls" and not use_cls_token:
            raise ValueError("pooling='cls' needs use_cls_token=True")
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by {num_attention_heads} heads")
        if attention_backend not in BACKENDS:
            raise ValueError(f"attention_backend must be one of {', '.join(BACKENDS)}, got {attention_backend!r}")
        check_mask_decoder(mask_decoder, stem)
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.stem = stem
        self.patch_bias = patch_bias
        self.use_cls_token = use_cls_token
        self.pre_layernorm = pre_layernorm
        self.pooling = pooling
        self.region_bias_init = region_bias_init
        self.max_regions = max_regions
        self.point_radius = point_radius
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.attention_backend = attention_backend
        self.initializer_range = initializer_range
        self.mask_decoder = dict(mask_decoder) if mask_decoder is not None else None
        self.grounding_kinds = list(grounding_kinds) if grounding_kinds else None

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.use_cls_token)


def vision_and_text_configs(vision_config: dict | MedPVisionConfig | None, text_config: dict | PretrainedConfig | None,
                            default_text_model_type: str) -> tuple[MedPVisionConfig, PretrainedConfig]:
    """The two sub-configs of a composite model, from config objects or their JSON dicts."""
    if isinstance(vision_config, dict):
        vision_config = MedPVisionConfig(**vision_config)
    if isinstance(text_config, dict):
        text_config = AutoConfig.for_model(**text_config)
    return (vision_config if vision_config is not None else MedPVisionConfig(),
            text_config if text_config is not None else AutoConfig.for_model(default_text_model_type))

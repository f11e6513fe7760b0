"""EfficientNet-Lite0: packaged weights load strictly, classify a cat, and give the expected feature maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import chelsea

from vision_tower.efficientnet import (
    INPUT_MEAN,
    INPUT_STD,
    STRIDE16_CHANNELS,
    STRIDE32_CHANNELS,
    EfficientNetLite0,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0,
)

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def model() -> EfficientNetLite0:
    return load_efficientnet_lite0()


def _preprocess(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, size, size) normalised float tensor."""
    resized = Image.fromarray(image).resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, size, size)
    mean = torch.tensor(INPUT_MEAN).view(3, 1, 1)
    std = torch.tensor(INPUT_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def test_loads_packaged_weights_strictly(model: EfficientNetLite0) -> None:
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert len(model.state_dict()) == len(state)
    torch.testing.assert_close(model.conv_stem.weight, state["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.blocks[10].bn2.running_var, state["_blocks.10._bn2.running_var"], rtol=0, atol=0)
    torch.testing.assert_close(model.fc.bias, state["_fc.bias"], rtol=0, atol=0)
    assert not model.training


def test_classifies_cat(model: EfficientNetLite0) -> None:
    with torch.no_grad():
        probs = model(_preprocess(chelsea())).softmax(dim=-1)[0]  # (1000,)
    top5 = probs.topk(5).indices.tolist()
    assert CAT_CLASSES & set(top5), f"no cat class in top-5 {top5}"


@pytest.mark.parametrize(("stride", "channels"), [(16, STRIDE16_CHANNELS), (32, STRIDE32_CHANNELS)])
def test_forward_features_shapes(model: EfficientNetLite0, stride: int, channels: int) -> None:
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        features = model.forward_features(x, stride=stride)
    assert features.shape == (2, channels, 224 // stride, 224 // stride)


def test_forward_features_stride16_skips_later_layers(model: EfficientNetLite0) -> None:
    called: list[str] = []
    hooks = [
        model.blocks[11].register_forward_hook(lambda *_: called.append("stage6")),
        model.conv_head.register_forward_hook(lambda *_: called.append("head")),
    ]
    try:
        with torch.no_grad():
            model.forward_features(torch.randn(1, 3, 64, 64), stride=16)
    finally:
        for hook in hooks:
            hook.remove()
    assert called == []


def test_forward_features_rejects_other_strides(model: EfficientNetLite0) -> None:
    with pytest.raises(ValueError, match="strides must be among"):
        model.forward_features(torch.randn(1, 3, 64, 64), stride=3)


def test_the_pyramid_is_the_feature_maps_at_each_stride_in_one_pass(model: EfficientNetLite0) -> None:
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        s8, s4, s16 = model.forward_pyramid(x, (8, 4, 16))
        assert (s4.shape, s8.shape, s16.shape) == ((1, 24, 16, 16), (1, 40, 8, 8), (1, 112, 4, 4))
        torch.testing.assert_close(s16, model.forward_features(x, stride=16))
        torch.testing.assert_close(s8, model.forward_features(x, stride=8))

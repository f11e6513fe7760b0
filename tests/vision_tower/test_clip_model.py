import pytest
import torch
from transformers import AutoTokenizer, BertConfig, CLIPTextConfig

from vision_tower import (MedPCLIP, MedPCLIPConfig, MedPCLIPModel, MedPCLIPProcessor, MedPVisionTower,
                          RegionImageProcessor, default_text_tower_path, efficientnet_hybrid)
from vision_tower.efficientnet import load_efficientnet_lite0

from ..conftest import tiny_vision_config

BOXES = [{"type": "box", "box": [0, 0, 60, 45]}, {"type": "box", "box": [60, 45, 120, 90]},
         {"type": "box", "box": [60, 0, 120, 45]}]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(default_text_tower_path()))


def tiny_clip(tokenizer, text_config):
    torch.manual_seed(0)
    model = MedPCLIPModel(MedPCLIPConfig(tiny_vision_config(), text_config, projection_dim=16,
                                         text_pooling="mean" if text_config.model_type == "bert" else "pooler"))
    return MedPCLIP(model, MedPCLIPProcessor(RegionImageProcessor.from_config(model.config.vision_config), tokenizer))


TEXT_CONFIGS = {
    "bert": BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    "clip": CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           vocab_size=30522, eos_token_id=102, max_position_embeddings=64),
}


def batch(clip, images):
    inputs = clip.processor.image_processor(images, [BOXES[:2], BOXES[1:]])
    text = clip.processor.tokenize(["chest radiograph", "abdominal CT"])
    region_text = clip.processor.tokenize(["left lung", "heart", "heart", "liver"])
    return dict(pixel_values=inputs.pixel_values, regions=inputs.regions, **text,
                region_input_ids=region_text["input_ids"], region_attention_mask=region_text["attention_mask"])


@pytest.mark.parametrize("text", list(TEXT_CONFIGS))
def test_contrastive_losses_train_down(tokenizer, image, text):
    clip = tiny_clip(tokenizer, TEXT_CONFIGS[text])
    model = clip.model.train()
    inputs = batch(clip, [image, 1.0 - image])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(**inputs)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert out.image_text_loss is not None and out.region_text_loss is not None
    assert out.region_hard_negative_loss is not None
    assert losses[-1] < 0.5 * losses[0], losses


def test_hard_negative_loss_compares_regions_of_one_image_only(tokenizer, image):
    clip = tiny_clip(tokenizer, TEXT_CONFIGS["bert"])
    inputs = batch(clip, [image, image])
    inputs["regions"] = clip.processor.image_processor([image, image], [BOXES[:1], BOXES[1:2]]).regions
    region_text = clip.processor.tokenize(["left lung", "heart"])
    inputs.update(region_input_ids=region_text["input_ids"], region_attention_mask=region_text["attention_mask"])
    out = clip.model(**inputs)
    assert out.region_hard_negative_loss.item() == pytest.approx(0.0, abs=1e-6)  # one region per image
    assert out.region_text_loss.item() > 0


def test_region_caption_count_mismatch_is_an_error(tokenizer, image):
    clip = tiny_clip(tokenizer, TEXT_CONFIGS["bert"])
    inputs = batch(clip, [image, image])
    inputs["region_input_ids"] = inputs["region_input_ids"][:2]
    inputs["region_attention_mask"] = inputs["region_attention_mask"][:2]
    with pytest.raises(ValueError, match="4 valid regions but 2 region captions"):
        clip.model(**inputs)


def test_classify_and_save_load(tokenizer, image, tmp_path):
    clip = tiny_clip(tokenizer, TEXT_CONFIGS["bert"])
    probs = clip.classify(image, BOXES, ["nodule", "cyst", "normal lung"], template="a scan showing {}")
    assert probs.shape == (3, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    clip.save_pretrained(tmp_path)
    again = MedPCLIP.from_pretrained(tmp_path)
    torch.testing.assert_close(again.classify(image, BOXES, ["nodule", "cyst", "normal lung"],
                                              template="a scan showing {}"), probs, rtol=0, atol=0)
    with pytest.raises(ValueError, match="at least one label"):
        clip.classify(image, BOXES, [])


def test_default_parts_efficientnet_stem_and_minilm_text_tower(image, tmp_path):
    tower = efficientnet_hybrid(hidden_size=64, num_hidden_layers=1, num_attention_heads=2)
    reference = load_efficientnet_lite0()
    ours = tower.embeddings.stem.backbone.state_dict()
    assert len(ours) > 100
    for k, v in ours.items():
        assert torch.equal(v, reference.state_dict()[k]), k  # the ImageNet weights really loaded
    tower.eval().save_pretrained(tmp_path / "hybrid")
    again = MedPVisionTower.from_pretrained(tmp_path / "hybrid").eval()
    pixels = RegionImageProcessor.from_config(tower.config)(image).pixel_values
    with torch.no_grad():
        assert torch.equal(again(pixels).pooler_output, tower(pixels).pooler_output)
    model = MedPCLIPModel.from_parts(tower, projection_dim=32)
    assert model.config.text_config.hidden_size == 384  # the packaged MiniLM
    tok = AutoTokenizer.from_pretrained(str(default_text_tower_path()))
    clip = MedPCLIP(model, MedPCLIPProcessor(RegionImageProcessor.from_config(tower.config), tok))
    probs = clip.classify(image, BOXES[:2], ["lung", "heart"])
    assert probs.shape == (2, 2) and torch.isfinite(probs).all()
    # the stem's BatchNorms keep their ImageNet statistics in training mode
    model.train()
    assert not model.vision_model.embeddings.stem.backbone.training

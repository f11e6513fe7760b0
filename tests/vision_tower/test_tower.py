import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from vision_tower import MedPVisionTower, RegionImageProcessor, from_hf_vision


def sixteen_regions(h=90, w=120):
    rng = np.random.default_rng(3)
    regions = []
    for i in range(16):
        x, y = rng.uniform(0, w - 30), rng.uniform(0, h - 30)
        kind = i % 4
        if kind == 0:
            regions.append({"type": "box", "box": [x, y, x + 25, y + 20]})
        elif kind == 1:
            regions.append({"type": "points", "points": [[x + 5, y + 5], [x + 9, y + 9]], "labels": [1, 0]})
        elif kind == 2:
            regions.append({"type": "polygon", "points": [[x, y], [x + 25, y + 3], [x + 12, y + 28]]})
        else:
            regions.append({"type": "scribble", "points": [[x, y], [x + 20, y + 10], [x + 28, y + 2]]})
    return regions


def test_global_outputs_bit_identical_with_0_1_16_regions(tiny_tower, processor, image):
    regions = sixteen_regions()
    outs = []
    with torch.no_grad():
        for k in (0, 1, 16):
            inp = processor(image, regions[:k])
            outs.append(tiny_tower(inp.pixel_values, inp.regions, output_hidden_states=True))
    base = tiny_tower(processor(image).pixel_values, output_hidden_states=True)
    for out in outs:
        assert torch.equal(out.last_hidden_state, base.last_hidden_state)
        assert torch.equal(out.pooler_output, base.pooler_output)
        assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, base.hidden_states))
    assert outs[0].region_embeds.shape == (1, 0, 32) and outs[2].region_embeds.shape == (1, 16, 32)


def test_region_alone_equals_region_among_fifteen_others(tiny_tower, processor, image):
    regions = sixteen_regions()
    with torch.no_grad():
        inp = processor(image, regions)
        together = tiny_tower(inp.pixel_values, inp.regions).region_embeds
        for k in (0, 5, 15):
            inp = processor(image, [regions[k]])
            alone = tiny_tower(inp.pixel_values, inp.regions).region_embeds
            torch.testing.assert_close(alone[0, 0], together[0, k], rtol=1e-5, atol=1e-5)


def test_moving_a_region_changes_its_embedding(tiny_tower, processor, image):
    a = {"type": "box", "box": [10, 10, 40, 40]}
    b = {"type": "box", "box": [70, 40, 100, 70]}
    with torch.no_grad():
        inp = processor(image, [a, b])
        emb = tiny_tower(inp.pixel_values, inp.regions).region_embeds[0]
    assert (emb[0] - emb[1]).abs().max() > 1e-2


def test_cached_image_region_encoding_equals_one_pass(tiny_tower, processor, image):
    regions = sixteen_regions()
    inp = processor(image, regions)
    with torch.no_grad():
        one_pass = tiny_tower(inp.pixel_values, inp.regions)
        cache = tiny_tower.encode_image(inp.pixel_values)
        later = tiny_tower.encode_regions(cache, inp.regions)
        one_more = tiny_tower.encode_regions(cache, processor(image, regions[3:4]).regions)
    torch.testing.assert_close(later.region_embeds, one_pass.region_embeds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one_more.region_embeds[0, 0], one_pass.region_embeds[0, 3], rtol=1e-5, atol=1e-5)
    assert torch.equal(later.pooler_output, one_pass.pooler_output)


def test_int8_region_rows_stay_within_bf16_tolerance_and_leave_the_image_and_checkpoint_alone(
        tiny_tower, processor, image, tmp_path):
    inp = processor(image, sixteen_regions())
    with torch.no_grad():
        cache = tiny_tower.encode_image(inp.pixel_values)
        exact = tiny_tower.encode_regions(cache, inp.regions)
        tiny_tower.save_pretrained(tmp_path / "before")
        tiny_tower.pack_region_rows()
        packed = tiny_tower.encode_regions(cache, inp.regions)
        one_pass = tiny_tower(inp.pixel_values, inp.regions)  # the one-pass forward keeps the fp32 blocks
    deviation = (packed.region_embeds - exact.region_embeds).abs().max() / exact.region_embeds.abs().max()
    assert 0 < deviation < 3e-2  # the bf16 tolerance of the fused-kernel parity tests
    cosine = torch.nn.functional.cosine_similarity(packed.region_embeds, exact.region_embeds, dim=-1)
    assert cosine.min() > 0.999
    torch.testing.assert_close(one_pass.region_embeds, exact.region_embeds, rtol=1e-5, atol=1e-5)
    assert torch.equal(packed.pooler_output, exact.pooler_output)
    tiny_tower.save_pretrained(tmp_path / "after")  # the int8 copies are not part of the checkpoint
    saved = [(tmp_path / run / "model.safetensors").read_bytes() for run in ("before", "after")]
    assert saved[0] == saved[1]


def test_batch_with_different_region_counts(tiny_tower, processor, image):
    regions = sixteen_regions()
    inp = processor([image, image[:50, :70]], [regions[:3], [{"type": "box", "box": [5, 5, 30, 30]}]])
    assert inp.regions.valid.tolist() == [[True, True, True], [True, False, False]]
    with torch.no_grad():
        out = tiny_tower(inp.pixel_values, inp.regions)
        first = processor(image, regions[:3])
        single = tiny_tower(first.pixel_values, first.regions)
    torch.testing.assert_close(out.region_embeds[0], single.region_embeds[0], rtol=1e-5, atol=1e-5)


def test_save_load_round_trip_is_exact(tiny_tower, processor, image, tmp_path):
    tiny_tower.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = MedPVisionTower.from_pretrained(tmp_path).eval()
    for (k, a), (_, b) in zip(tiny_tower.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    inp = processor(image, sixteen_regions()[:4])
    with torch.no_grad():
        assert torch.equal(tiny_tower(inp.pixel_values, inp.regions).region_embeds,
                           loaded(inp.pixel_values, inp.regions).region_embeds)


def test_gradients_reach_region_bias_and_prompt_encoder(tiny_tower, processor, image):
    tiny_tower.train()
    inp = processor(image, sixteen_regions()[:4])
    out = tiny_tower(inp.pixel_values, inp.regions)
    (out.region_embeds * torch.randn_like(out.region_embeds)).sum().backward()
    assert tiny_tower.region_bias.grad.abs().sum() > 0
    assert tiny_tower.prompt_encoder.type_embedding.weight.grad.abs().sum() > 0
    assert tiny_tower.prompt_encoder.geometry_proj.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients(tiny_tower, processor, image):
    inp = processor(image, sixteen_regions()[:4])
    grads = []
    for checkpointing in (False, True):
        tiny_tower.zero_grad()
        tiny_tower.train()
        if checkpointing:
            tiny_tower.gradient_checkpointing_enable()
        out = tiny_tower(inp.pixel_values, inp.regions)
        (out.region_embeds.square().sum() + out.pooler_output.square().sum()).backward()
        grads.append(tiny_tower.region_bias.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


HF_TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
               image_size=32, patch_size=8)


@pytest.mark.parametrize("hf_model, hf_config", [(CLIPVisionModel, CLIPVisionConfig),
                                                 (SiglipVisionModel, SiglipVisionConfig)])
def test_global_path_reproduces_hf_checkpoint(hf_model, hf_config, tmp_path, image):
    torch.manual_seed(0)
    hf = hf_model(hf_config(**HF_TINY)).eval()
    hf.save_pretrained(tmp_path)
    tower = from_hf_vision(str(tmp_path)).eval()
    processor = RegionImageProcessor.from_config(tower.config)
    inp = processor(image, sixteen_regions()[:3])
    with torch.no_grad():
        ref = hf(inp.pixel_values, output_hidden_states=True)
        ours = tower(inp.pixel_values, inp.regions, output_hidden_states=True)
    assert len(ref.hidden_states) == len(ours.hidden_states) == 4
    for a, b in zip(ref.hidden_states, ours.hidden_states):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.last_hidden_state, ref.last_hidden_state, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.pooler_output, ref.pooler_output, rtol=0, atol=1e-5)
    assert ours.region_embeds.shape == (1, 3, 32)
    # and it saves/loads as a MedP tower
    tower.save_pretrained(tmp_path / "medp")
    again = MedPVisionTower.from_pretrained(tmp_path / "medp").eval()
    with torch.no_grad():
        # without region rows the attention reduces over fewer keys: equal to float32 rounding (1 ulp
        # measured on this machine's CPU kernels), not bit for bit
        torch.testing.assert_close(again(inp.pixel_values).pooler_output, ours.pooler_output, rtol=0, atol=1e-6)


def test_padding_regions_leave_the_real_ones_unchanged(tiny_tower, processor, image):
    inputs = processor(image, [{"type": "box", "box": [5, 5, 40, 30]}, {"type": "points", "points": [[20, 20]]}])
    padded = inputs.regions.pad_to(4)
    assert padded.num_regions == 4 and padded.valid.tolist() == [[True, True, False, False]]
    assert (padded.keypoint_labels[:, 2:] == -1).all() and padded.coverage[:, 2:].sum() == 0
    assert inputs.regions.pad_to(1) is inputs.regions  # already enough
    with torch.no_grad():
        plain = tiny_tower(inputs.pixel_values, inputs.regions)
        more = tiny_tower(inputs.pixel_values, padded)
    torch.testing.assert_close(more.region_embeds[:, :2], plain.region_embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(more.pooler_output, plain.pooler_output, rtol=0, atol=0)

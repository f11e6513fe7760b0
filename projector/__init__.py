"""Image and region projectors into the LLM embedding space (DESIGN.md §2). Not built yet."""

"""Training: data schema and loaders, collator, SFT stages, DeepSpeed set-up (DESIGN.md §6). Not built yet."""

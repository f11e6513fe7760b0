"""Training: the collator, the stages and their engines, ``medp train`` (DESIGN.md §6). The JSONL
data schema, its validator and the importers are torch-free, in :mod:`medp_base`.

Public API: ``SFTCollator``, ``length_grouped_order``.
"""

from .collator import SFTCollator, length_grouped_order

__all__ = ["SFTCollator", "length_grouped_order"]

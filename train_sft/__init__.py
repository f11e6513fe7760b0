"""Training: the JSONL data schema, its validator and importers, the collator (DESIGN.md §5, §6).

Public API: ``Sample``, ``check_jsonl``, ``load_jsonl``, ``DataError``, ``import_llava``, ``import_slake``,
``SFTCollator``, ``length_grouped_order``.
"""

from .collator import SFTCollator, length_grouped_order
from .data import DataError, DatasetReport, Sample, check_jsonl, load_jsonl
from .importers import import_llava, import_slake

__all__ = ["DataError", "DatasetReport", "SFTCollator", "Sample", "check_jsonl", "import_llava", "import_slake",
           "length_grouped_order", "load_jsonl"]

"""Image and region projectors into the LLM embedding space (DESIGN.md §2).

Public API: ``ImageProjector``, ``RegionProjector``, ``mask_pool``.
"""

from .projectors import ImageProjector, RegionProjector, mask_pool

__all__ = ["ImageProjector", "RegionProjector", "mask_pool"]

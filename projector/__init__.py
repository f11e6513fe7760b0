"""Image and region projectors into the LLM embedding space (DESIGN.md §2).

Public API: ``ImageProjector``, ``RegionProjector``.
"""

from .projectors import ImageProjector, RegionProjector

__all__ = ["ImageProjector", "RegionProjector"]

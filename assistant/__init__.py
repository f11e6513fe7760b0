"""The assistant: medical image I/O, region rendering, the region report and the ``medp`` CLI.

Public API::

    load_image, load_dicom, ImageLoadError, WINDOW_PRESETS, LoadedImage   # DICOM / PNG / JPEG -> [0, 1]
    draw_regions, region_colour                                         # regions drawn on an image
    encode_and_report, plot_report                                      # what the tower sees, as table and figure
"""

from .image_io import WINDOW_PRESETS, ImageLoadError, LoadedImage, load_dicom, load_image
from .region_report import encode_and_report, plot_report
from .render import draw_regions, region_colour

__all__ = ["WINDOW_PRESETS", "ImageLoadError", "LoadedImage", "draw_regions", "encode_and_report", "load_dicom",
           "load_image", "plot_report", "region_colour"]

"""Draw region prompts onto an image (PIL): colour-coded, numbered like ``<region1>``."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .regions import BoxPrompt, MaskPrompt, PointsPrompt, PolygonPrompt, RegionPrompt, ScribblePrompt
from .requests import data_url

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
)

COLOUR_NAMES: tuple[str, ...] = ("red", "green", "blue", "orange", "purple", "cyan", "magenta", "lime", "pink", "teal",
                                 "lavender", "brown", "beige", "maroon", "mint", "olive")


def region_colour(index: int) -> tuple[int, int, int]:
    """Colour of region ``index`` (0-based), the same everywhere in the product."""
    return PALETTE[index % len(PALETTE)]


def to_rgb_image(pixels: np.ndarray) -> Image.Image:
    """(H, W) or (H, W, 3) float in [0, 1] -> RGB PIL image."""
    arr = (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int],
           size: tuple[int, int], line: int) -> None:
    """A filled label box with ``text`` just above ``xy`` (kept inside the image)."""
    font_size = max(12, round(max(size) / 28))
    tx, ty = max(0, xy[0]), max(0, xy[1] - font_size - line)
    draw.rectangle(draw.textbbox((tx, ty), text, font_size=font_size), fill=(*colour, 220))
    draw.text((tx, ty), text, fill=(0, 0, 0, 255), font_size=font_size)


def draw_boxes(image: Image.Image, boxes: list, first_colour: int = 0,
               masks: Sequence[np.ndarray | None] = ()) -> Image.Image:
    """A copy of ``image`` with grounded boxes (:class:`medp_base.grounding.GroundedBox`) outlined and
    labelled with their phrases; colours continue after ``first_colour``. ``masks``: the mask each box
    was placed by ((h, w) bool, or None for a box without one; one per box or none), blended beneath."""
    placed = [(mask, region_colour(first_colour + i)) for i, mask in enumerate(masks) if mask is not None]
    out = draw_masks(image, [m for m, _ in placed], [c for _, c in placed]) if placed else image.convert("RGB")
    draw = ImageDraw.Draw(out, "RGBA")
    line = max(2, round(max(out.size) / 300))
    for i, b in enumerate(boxes):
        c = region_colour(first_colour + i)
        draw.rectangle(b.box, outline=(*c, 255), width=line)
        _label(draw, b.box[:2], b.phrase or f"box {i + 1}", c, out.size, line)
    return out


def draw_region_numbers(image: Image.Image, numbers: list[int], corners: list[tuple[float, float]],
                        colours: list[tuple[int, int, int]]) -> Image.Image:
    """A copy of ``image`` with each of ``numbers`` just above its region's top-left corner (``corners``,
    in ``image`` px) in its colour, and nothing else: for a canvas that draws the shapes themselves."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out, "RGBA")
    line = max(2, round(max(out.size) / 300))
    for k, xy, c in zip(numbers, corners, colours):
        _label(draw, xy, str(k), c, out.size, line)
    return out


def draw_regions(image: Image.Image, prompts: list[RegionPrompt], alpha: float = 0.35,
                 colours: list[tuple[int, int, int]] | None = None) -> Image.Image:
    """A copy of ``image`` with each prompt filled (translucent), outlined and labelled with its number;
    prompt ``i`` in ``colours[i]`` (default: :func:`region_colour`)."""
    base = image.convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    line = max(2, round(max(base.size) / 300))
    fill_a, edge_a = int(255 * alpha), 255
    for i, p in enumerate(prompts):
        c = colours[i] if colours else region_colour(i)
        if isinstance(p, BoxPrompt):
            draw.rectangle(p.bounding_box(), fill=(*c, fill_a), outline=(*c, edge_a), width=line)
        elif isinstance(p, PolygonPrompt):
            pts = [tuple(v) for v in np.asarray(p.points)]
            draw.polygon(pts, fill=(*c, fill_a), outline=(*c, edge_a), width=line)
        elif isinstance(p, ScribblePrompt):
            pts = [tuple(v) for v in np.asarray(p.points)]
            draw.line(pts, fill=(*c, edge_a), width=max(line, round(p.width)), joint="curve")
        elif isinstance(p, PointsPrompt):
            for (x, y), lab in zip(np.asarray(p.points), p.labels):
                r = p.radius
                draw.ellipse([x - r, y - r, x + r, y + r], fill=(*c, fill_a if lab else 0), outline=(*c, edge_a),
                             width=line)
                if not lab:
                    draw.line([x - r, y, x + r, y], fill=(*c, edge_a), width=line)
        elif isinstance(p, MaskPrompt):
            layer = Image.new("RGBA", base.size, (*c, fill_a))
            overlay.paste(layer, (0, 0), Image.fromarray(p.mask.astype(np.uint8) * 255))
        _label(draw, p.bounding_box()[:2], str(i + 1), c, base.size, line)
    return Image.alpha_composite(base, overlay).convert("RGB")


def mask_outline(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` pixels of its edge (the image's border is no edge).
    (H, W) bool -> (H, W) bool."""
    from scipy import ndimage  # lazy: scipy.ndimage: +0.3 s, only where masks are drawn

    square = np.ones((2 * width + 1, 2 * width + 1), dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, square, border_value=1)


def blend_mask(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float = 0.35,
               width: int = 1) -> np.ndarray:
    """``rgb`` ((H, W, 3) float in [0, 1]) with the (H, W) bool ``mask`` blended in ``colour`` at
    ``alpha`` and its outline (``width`` px) drawn in ``colour``; a new array."""
    rgb = rgb.astype(np.float32, copy=False)
    tint = np.asarray(colour, dtype=np.float32) / 255.0  # (3,)
    out = np.where(mask[..., None], (1.0 - alpha) * rgb + alpha * tint, rgb)
    out[mask_outline(mask, width)] = tint
    return out


def draw_masks(image: Image.Image, masks: list[np.ndarray], colours: list[tuple[int, int, int]],
               alpha: float = 0.35, width: int = 2) -> Image.Image:
    """A copy of ``image`` with each (h, w) bool mask, scaled to the image if it is of another size,
    blended in its colour and outlined (:func:`blend_mask`)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    for mask, colour in zip(masks, colours):
        if mask.shape != rgb.shape[:2]:
            scaled = Image.fromarray(mask.astype(np.uint8) * 255).resize(image.size, Image.BILINEAR)
            mask = np.asarray(scaled) >= 128
        rgb = blend_mask(rgb, mask, colour, alpha, width)
    return to_rgb_image(rgb)


def png_bytes(image: Image.Image, compress_level: int = 6) -> bytes:
    """``image`` as a PNG; ``compress_level`` 1 is about 4x faster than the default 6, ~10% larger."""
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=compress_level)
    return buf.getvalue()


def png_data_url(image: Image.Image) -> str:
    """An RGB PNG data URL, as an OpenAI ``image_url`` content part carries an image."""
    return data_url(png_bytes(image.convert("RGB")))

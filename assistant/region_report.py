"""Encode an image with its regions and report what the tower sees: a table and a figure.

For each region: its size, the patches it covers, and a similarity map (cosine similarity of the
region embedding with every patch feature: "where else in the image looks like this region");
between regions: a cosine-similarity matrix.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medp_base.image_io import LoadedImage
from medp_base.letterbox import Letterbox
from medp_base.regions import RegionPrompt
from medp_base.render import draw_regions, region_colour, to_rgb_image
from vision_tower import MedPVisionTower, RegionImageProcessor


@dataclass
class RegionFinding:
    region: int  # 1-based, as in <region1>
    kind: str
    bbox: tuple[float, float, float, float]  # original pixels
    area_patches: float  # sum of the coverage, in patches
    patches_touched: int
    most_similar_region: int | None
    similarity_to_it: float | None
    hotspot_xy: tuple[float, float]  # original-image centre of the patch most similar to the region


@dataclass
class RegionReport:
    image: str
    modality: str
    image_size: tuple[int, int]
    tower: str
    findings: list[RegionFinding]
    region_similarity: list[list[float]]
    seconds_image: float
    seconds_regions: float

    def table(self) -> str:
        lines = [f"{self.image} ({self.modality}, {self.image_size[1]}x{self.image_size[0]} px) — {self.tower}",
                 f"global encode {1000 * self.seconds_image:.0f} ms; regions on the cached image "
                 f"{1000 * self.seconds_regions:.0f} ms", "",
                 f"{'region':<11}{'type':<10}{'bbox (px)':<26}{'area':>8}{'patches':>9}  {'most similar':<19}hotspot"]
        for f in self.findings:
            bbox = "[" + ", ".join(f"{v:.0f}" for v in f.bbox) + "]"
            sim = f"<region{f.most_similar_region}> {f.similarity_to_it:+.2f}" if f.most_similar_region else "-"
            lines.append(f"{f'<region{f.region}>':<11}{f.kind:<10}{bbox:<26}{f.area_patches:>8.1f}"
                         f"{f.patches_touched:>9}  {sim:<19}({f.hotspot_xy[0]:.0f}, {f.hotspot_xy[1]:.0f})")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _patch_centres(letterbox: Letterbox, patch: int) -> np.ndarray:
    """(g*g, 2) original-image xy of every patch centre."""
    g = letterbox.size // patch
    yy, xx = np.mgrid[0:g, 0:g]
    centres = np.stack([xx.ravel(), yy.ravel()], 1) * patch + patch / 2
    return letterbox.inverse(centres)


@torch.no_grad()
def encode_and_report(tower: MedPVisionTower, processor: RegionImageProcessor, loaded: LoadedImage,
                      regions: Sequence[Any], tower_name: str, mask_root: str | Path | None = None
                      ) -> tuple[RegionReport, dict[str, Any]]:
    """Encode ``loaded`` once, then its regions on the cached image; returns the report and the arrays
    the figure needs (prompts, letterbox, coverage (K, g, g), similarity maps (K, g, g)).
    ``mask_root``: the folder ``png`` mask paths may be read from (None: paths refused)."""

    prompts = processor.parse(regions, loaded.size, mask_root)
    inputs = processor(loaded.pixels, prompts)
    t0 = time.perf_counter()
    cache = tower.encode_image(inputs.pixel_values)
    t1 = time.perf_counter()
    out = tower.encode_regions(cache, inputs.regions)
    t2 = time.perf_counter()

    patches = out.last_hidden_state[:, tower.config.num_prefix_tokens:]
    if tower.config.pooling == "cls":  # patch tokens are not normalised in CLIP-style towers
        patches = tower.post_layernorm(patches)
    region = F.normalize(out.region_embeds[0], dim=-1)  # (K, D)
    patch = F.normalize(patches[0], dim=-1)  # (N, D)
    sim_maps = (region @ patch.T).numpy()  # (K, N)
    region_sim = (region @ region.T).numpy()  # (K, K)

    g = tower.config.grid_size
    lb = inputs.letterboxes[0]
    centres = _patch_centres(lb, tower.config.patch_size)
    h, w = loaded.size
    content = (centres[:, 0] >= 0) & (centres[:, 0] < w) & (centres[:, 1] >= 0) & (centres[:, 1] < h)  # not padding
    cov = inputs.regions.coverage[0].numpy()  # (K, N)
    findings = []
    for k, p in enumerate(prompts):
        others = [j for j in range(len(prompts)) if j != k]
        best = max(others, key=lambda j: region_sim[k, j]) if others else None
        elsewhere = content & (cov[k] == 0)  # image patches outside the region
        hot = int(np.argmax(np.where(elsewhere, sim_maps[k], -np.inf) if elsewhere.any() else sim_maps[k]))
        findings.append(RegionFinding(
            region=k + 1, kind=p.kind, bbox=tuple(round(v, 1) for v in p.bounding_box()),
            area_patches=round(float(cov[k].sum()), 2), patches_touched=int((cov[k] > 0).sum()),
            most_similar_region=None if best is None else best + 1,
            similarity_to_it=None if best is None else round(float(region_sim[k, best]), 3),
            hotspot_xy=(round(float(centres[hot, 0]), 1), round(float(centres[hot, 1]), 1))))
    report = RegionReport(loaded.source, loaded.modality, loaded.size, tower_name, findings,
                          np.round(region_sim, 3).tolist(), t1 - t0, t2 - t1)
    arrays = {"prompts": prompts, "letterbox": lb, "coverage": cov.reshape(-1, g, g),
              "similarity": sim_maps.reshape(-1, g, g)}
    return report, arrays


def plot_report(loaded: LoadedImage, report: RegionReport, arrays: dict[str, Any], path: Path) -> Path:
    """Figure: the image with its regions, the coverage grid, the region similarity matrix, and one
    similarity map per region (the region outlined in its colour)."""
    import matplotlib  # lazy: matplotlib: +0.5 s, only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prompts: list[RegionPrompt] = arrays["prompts"]
    lb: Letterbox = arrays["letterbox"]
    k = len(prompts)
    h, w = loaded.size
    (x0, y0), (x1, y1) = lb.inverse([[0, 0], [lb.size, lb.size]])
    extent = (x0, x1, y1, y0)  # the patch grid in original-image coordinates
    cols = max(3, min(k, 4))
    rows = 1 + -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    image = to_rgb_image(loaded.pixels)
    axes[0, 0].imshow(draw_regions(image, prompts))
    axes[0, 0].set_title("regions")
    coverage_rgb = np.zeros((*arrays["coverage"].shape[1:], 3))
    for i in range(k):
        coverage_rgb = np.maximum(coverage_rgb, arrays["coverage"][i, ..., None] * np.array(region_colour(i)) / 255)
    axes[0, 1].imshow(image, extent=(0, w, h, 0))
    axes[0, 1].imshow(coverage_rgb, extent=extent, alpha=0.6, interpolation="nearest")
    axes[0, 1].set_xlim(0, w), axes[0, 1].set_ylim(h, 0)
    axes[0, 1].set_title("per-patch coverage m_k")
    sim = np.array(report.region_similarity)
    axes[0, 2].axis("on")
    axes[0, 2].imshow(sim, vmin=-1, vmax=1, cmap="coolwarm")
    axes[0, 2].set_xticks(range(k), [str(i + 1) for i in range(k)])
    axes[0, 2].set_yticks(range(k), [str(i + 1) for i in range(k)])
    axes[0, 2].set_title("region–region cosine similarity")
    for i in range(k):
        ax = axes[1 + i // cols, i % cols]
        ax.imshow(image, extent=(0, w, h, 0))
        ax.imshow(arrays["similarity"][i], extent=extent, alpha=0.55, cmap="magma", interpolation="bilinear")
        ax.contour(arrays["coverage"][i], levels=[0.5], extent=extent, origin="upper",
                   colors=[tuple(c / 255 for c in region_colour(i))], linewidths=2)
        ax.set_xlim(0, w), ax.set_ylim(h, 0)
        ax.set_title(f"<region{i + 1}> ({prompts[i].kind}): similar patches")
    fig.suptitle(f"{report.image} — {report.tower}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

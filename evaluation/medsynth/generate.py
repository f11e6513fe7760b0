"""``medp synth``: the MedSynth dataset written to a folder.

    OUT/images/<background>-<k>.png     scenes (a background with 0-3 findings drawn in)
    OUT/train.jsonl  OUT/test.jsonl     region VQA, one question a line (tasks.py), split by background
    OUT/captions.jsonl                  stage-0 captions of the training scenes
    OUT/seg_train.jsonl  OUT/seg_test.jsonl   segmentation targets: every finding's exact mask and the
                                        anatomy a background knows (MNI152 brain, white matter), split
                                        by background like the questions
    OUT/manifest.json                   seed, versions, backgrounds per split, counts per task, scenes per modality
    OUT/contact_sheet.png               samples with their regions, questions and answers

The same seed writes the same bytes: each scene draws from its own generator seeded by (seed,
background name, scene number), so it does not depend on what else is generated: asking for more
scenes of a background adds scenes and leaves the first ones as they were.

Brain MRI has 24 training slices where every other modality has one or two images, so with the same
number of scenes per background three quarters of the training questions are brain MRI.
``train_scenes_per_modality`` gives each training modality at least that many scenes by drawing more
scenes of its backgrounds; the test split is left as it is.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from medp_base.data import write_jsonl
from medp_base.grounding import parse_grounded
from medp_base.rle import encode_rle

from ..report import show_sample
from .backgrounds import Background, all_backgrounds
from .findings import kinds_for, place_findings
from .prompts import normal_patch
from .tasks import Scene, SceneQuestions, SynthOptions, caption_sample

MAX_FINDINGS = 3
NORMAL_SCENES = 0.1  # share of scenes drawn without any finding
MIN_TARGET_PIXELS = 12  # smaller anatomy (a slice's sliver of white matter) is not a segmentation target
ANATOMY_SCENES = 3  # a background's anatomy is a target in its first scenes only (it is the same in every scene)


def scene_rng(seed: int, background: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(background.encode()), index])


def make_scene(background: Background, index: int, seed: int, out: Path) -> Scene:
    """Draw scene ``index`` of ``background`` and save its image under ``out/images``."""
    rng = scene_rng(seed, background.name, index)
    kinds = kinds_for(background)
    count = 0 if rng.random() < NORMAL_SCENES else int(rng.integers(1, MAX_FINDINGS + 1))
    pixels, findings = place_findings(background, [kinds[i] for i in rng.integers(len(kinds), size=count)], rng)
    taken = np.zeros(background.size, bool)
    for f in findings:
        taken |= f.mask
    typical = np.median([s / background.spacing_mm for k in kinds for s in k.size_mm])
    normal = normal_patch(background.allowed, taken, float(np.clip(typical, 8, 0.2 * min(background.size))), rng)
    image = f"images/{background.name}-{index}.png"
    (out / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(out / image)
    return Scene(background, index, image, findings, [normal] if normal is not None else [], kinds, rng)


def seg_sample(scene: Scene) -> dict | None:
    """The scene's segmentation targets as mask regions (meta: their names), or None without any."""
    targets = [(f.kind, f.mask) for f in scene.findings]
    if scene.index < ANATOMY_SCENES:
        targets += [(name, m) for name, m in scene.background.structures.items() if m.sum() >= MIN_TARGET_PIXELS]
    if not targets:
        return None
    b = scene.background
    return {"id": scene.id, "image": scene.image, "regions": [{"type": "mask", "rle": encode_rle(m)} for _, m in targets],
            "meta": {"modality": b.modality, "background": b.name, "targets": [name for name, _ in targets],
                     "spacing_mm": b.spacing_mm if b.spacing_known else None}}


def scenes_per_background(chosen: list[Background], images_per_background: int,
                          train_scenes_per_modality: int = 0) -> dict[str, int]:
    """How many scenes to draw of each background: ``images_per_background``, raised for a training
    background until its modality has ``train_scenes_per_modality`` scenes in all."""
    train_backgrounds = Counter(b.modality for b in chosen if b.split == "train")
    return {b.name: max(images_per_background, -(-train_scenes_per_modality // train_backgrounds[b.modality]))
            if b.split == "train" else images_per_background for b in chosen}


def generate(out: str | Path, seed: int = 0, images_per_background: int = 4, backgrounds: list[str] | None = None,
             sheet_samples: int = 16, train_scenes_per_modality: int = 0,
             options: SynthOptions = SynthOptions()) -> dict:
    """Write MedSynth to ``out``; ``backgrounds``: only those whose names start with one of these;
    ``train_scenes_per_modality``: the least number of training scenes of each modality (module
    docstring); ``options``: optional questions and answer forms (:class:`.tasks.SynthOptions`). -> the
    manifest."""
    if images_per_background < 1:
        raise ValueError(f"images_per_background must be at least 1, got {images_per_background}")
    if train_scenes_per_modality < 0:
        raise ValueError(f"train_scenes_per_modality must not be negative, got {train_scenes_per_modality}")
    chosen = [b for b in all_backgrounds() if not backgrounds or b.name.startswith(tuple(backgrounds))]
    if not chosen:
        raise ValueError(f"no background matches {backgrounds}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    seg: dict[str, list[dict]] = {"train": [], "test": []}
    captions = []
    counts = scenes_per_background(chosen, images_per_background, train_scenes_per_modality)
    jobs = [(b, i) for b in chosen for i in range(counts[b.name])]
    for background, index in tqdm(jobs, desc="medsynth scenes", unit="scene"):
        scene = make_scene(background, index, seed, out)
        rows[background.split] += SceneQuestions(scene, options).build()
        if (sample := seg_sample(scene)) is not None:
            seg[background.split].append(sample)
        if background.split == "train":
            captions.append(caption_sample(scene))
    for name, data in (("train", rows["train"]), ("test", rows["test"]), ("captions", captions),
                       ("seg_train", seg["train"]), ("seg_test", seg["test"])):
        write_jsonl(data, out / f"{name}.jsonl")
    manifest = {
        "seed": seed, "images_per_background": images_per_background,
        "train_scenes_per_modality": train_scenes_per_modality,
        **asdict(options),
        "backgrounds": {split: sorted(b.name for b in chosen if b.split == split) for split in ("train", "test")},
        "samples": {split: len(r) for split, r in rows.items()}, "captions": len(captions),
        "seg_targets": {split: sum(len(r["regions"]) for r in data) for split, data in seg.items()},
        "tasks": {split: dict(sorted(Counter(r["meta"]["task"] for r in data).items())) for split, data in rows.items()},
        "modalities": dict(sorted(Counter(b.modality for b in chosen).items())),
        "scenes": {split: dict(sorted(Counter(b.modality for b, _ in jobs if b.split == split).items()))
                   for split in ("train", "test")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if sheet_samples:
        contact_sheet(rows["train"] + rows["test"], out, sheet_samples, seed)
    return manifest


def contact_sheet(samples: list[dict], root: Path, count: int, seed: int) -> Path:
    """A PNG grid of ``count`` samples (one per task and modality first) with regions, question and answer."""
    import matplotlib  # lazy: matplotlib: +0.5 s, only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt



    rng = np.random.default_rng(seed)
    order = [samples[i] for i in rng.permutation(len(samples))]
    keys: set[tuple[str, str]] = set()
    picked = []
    for s in order:  # one per (task, modality) first, then any
        key = (s["meta"]["task"], s["meta"]["modality"])
        if key not in keys:
            keys.add(key)
            picked.append(s)
    picked = picked[:count]
    chosen = {s["id"] for s in picked}
    picked += [s for s in order if s["id"] not in chosen][:count - len(picked)]
    cols = 4
    rows = (len(picked) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.6 * rows), squeeze=False)
    for ax, s in zip(axes.flat, picked):
        answer = s["conversations"][1]["value"]
        boxes = []
        if s["meta"]["answer_type"] == "box":
            with Image.open(root / s["image"]) as image:
                boxes = parse_grounded(answer, (image.height, image.width)).boxes
        question = s["conversations"][0]["value"].replace("<image>\n", "")
        text = f"[{s['meta']['task']} · {s['meta']['modality']}]\nQ: {question}\nA: {answer}"
        show_sample(ax, root / s["image"], s["regions"], boxes, text, width=48)
    for ax in axes.flat[len(picked):]:
        ax.axis("off")
    fig.tight_layout()
    path = root / "contact_sheet.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

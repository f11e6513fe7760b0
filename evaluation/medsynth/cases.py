"""Sample cases: one MedSynth test scene per modality, with free-hand regions and questions with their
answers, written where the base bundles them (``medp_base/samples``, read by :mod:`medp_base.cases`)
for the demo and the UI.

    python -m evaluation.medsynth.cases medp_base/samples

They come from test-split backgrounds, so the default model never saw these images in training.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .backgrounds import all_backgrounds
from .generate import make_scene
from .prompts import free_hand_circle
from .tasks import NORMAL

CASE_BACKGROUNDS = ("x-ray-RG3_UNCR", "ct-CT_small", "mr-examples_overlay", "mni152-axial-z+62",
                    "ultrasound-US1_UNCR", "fundus-test-half", "tissue-test-half")
CASES_FILE = "cases.json"


def write_cases(out: str | Path, seed: int = 0, backgrounds: tuple[str, ...] = CASE_BACKGROUNDS) -> Path:
    """The first scene with a finding of each background, every finding and the normal patch circled
    free-hand; -> cases.json."""
    out = Path(out)
    by_name = {b.name: b for b in all_backgrounds()}
    cases = []
    for name in backgrounds:
        background = by_name[name]
        if background.split != "test":
            raise ValueError(f"{name} is a training background: sample cases come from the test split")
        scene = make_scene(background, 0, seed, out)
        while not scene.findings:  # a scene without findings shows nothing: take the next one
            (out / scene.image).unlink()
            scene = make_scene(background, scene.index + 1, seed, out)
        labelled = [(f.kind, f.mask) for f in scene.findings] + [(NORMAL, m) for m in scene.normals]
        regions = [free_hand_circle(mask, scene.rng) for _, mask in labelled]
        kinds = sorted({f.kind for f in scene.findings})
        cases.append({
            "name": scene.id, "image": scene.image, "modality": background.modality,
            "body_part": background.body_part, "regions": regions, "truth": [kind for kind, _ in labelled],
            "grounding": [{"kind": k, "boxes": [list(f.box) for f in scene.findings if f.kind == k]} for k in kinds]})
    path = out / CASES_FILE
    header = json.dumps({"seed": seed, "note": "synthetic findings drawn on real images (MedSynth test split)"})
    path.write_text(header[:-1] + ', "cases": [\n' + ",\n".join(json.dumps(c) for c in cases) + "\n]}\n")
    return path


if __name__ == "__main__":
    print(f"wrote {write_cases(sys.argv[1] if len(sys.argv) > 1 else 'medp_base/samples')}")

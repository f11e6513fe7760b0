"""Writes recipes/smoke/: a few real medical images (from pydicom-data, pydicom and scikit-image,
downsized) with chat and caption JSONL whose answers are true of the image: the modality and
where each region lies. It exercises every stage end to end; it teaches no medicine.

    .venv/bin/python scripts/make_smoke_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

from medp_base.image_io import load_image

OUT = Path(__file__).resolve().parents[1] / "recipes" / "smoke"
SIDE = 160


def sources() -> list[tuple[str, str, np.ndarray]]:
    from pydicom.data import get_testdata_file
    from skimage import data

    def dicom(name: str) -> np.ndarray:
        return load_image(get_testdata_file(name)).pixels

    return [("chest_xray", "a chest radiograph", dicom("RG1_UNCI.dcm")),
            ("ct", "an axial CT slice", dicom("CT_small.dcm")),
            ("mr", "an MR image", dicom("MR_small.dcm")),
            ("retina", "a colour fundus photograph", data.retina())]


def where(box: list[float], w: int, h: int) -> str:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    vertical = "upper" if cy < h / 3 else "lower" if cy > 2 * h / 3 else "middle"
    horizontal = "left" if cx < w / 3 else "right" if cx > 2 * w / 3 else "central"
    return f"the {vertical} {horizontal} part of the image"


def to_png(pixels: np.ndarray, path: Path) -> tuple[int, int]:
    array = np.asarray(pixels, dtype=np.float32)
    array = (255 * (array - array.min()) / max(float(np.ptp(array)), 1e-6)).astype(np.uint8)
    image = Image.fromarray(array)
    image.thumbnail((SIDE, SIDE))
    image.save(path, optimize=True)
    return image.width, image.height


def main() -> None:
    rng = random.Random(0)
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    chat, captions = [], []
    for name, modality, pixels in sources():
        w, h = to_png(pixels, OUT / "images" / f"{name}.png")
        image = f"images/{name}.png"
        boxes = []
        for _ in range(3):
            bw, bh = rng.uniform(0.2, 0.4) * w, rng.uniform(0.2, 0.4) * h
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            boxes.append([round(x, 1), round(y, 1), round(x + bw, 1), round(y + bh, 1)])
        chat.append({"id": f"{name}-modality", "image": image, "regions": [],
                     "conversations": [{"from": "human", "value": "<image>\nWhat kind of image is this?"},
                                       {"from": "gpt", "value": f"This is {modality}."}]})
        for k, box in enumerate(boxes, start=1):
            region = {"type": "box", "box": box} if k != 2 else \
                {"type": "points", "points": [[(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]], "labels": [1]}
            chat.append({"id": f"{name}-region{k}", "image": image, "regions": [region],
                         "conversations": [{"from": "human", "value": "<image>\nWhere is <region1>?"},
                                           {"from": "gpt", "value": f"It is in {where(box, w, h)}."}]})
        captions.append({"id": name, "image": image, "caption": modality,
                         "regions": [{"type": "box", "box": b, "caption": where(b, w, h)} for b in boxes]})
    for file, rows in (("chat.jsonl", chat), ("captions.jsonl", captions)):
        (OUT / file).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(chat)} chat and {len(captions)} caption samples to {OUT}")


if __name__ == "__main__":
    main()

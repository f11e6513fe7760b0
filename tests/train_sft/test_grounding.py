"""``medp train-grounding``: a tiny MedP checkpoint's grounding head fitted on grounded answers (the
tower frozen); the result is a checkpoint with the head and nothing else changed, which places the
finding; a file without grounded answers is refused with the reason."""

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from assistant import load_assistant
from medp_base.grounding import to_1000
from medp_cli import main
from vision_tower.grounding_head import centre_cells
from vision_tower.segmenter import Segmenter

from .test_seg_stage import DECODER, blob_scene
from .test_trainer import base_model  # noqa: F401  (fixture)


def grounded_file(path, rng: np.random.Generator, count: int) -> list[list[list[float]]]:
    """Blob scenes asked "where is the blob?", answered with every blob's box -> the boxes per row."""
    rows, truth = [], []
    for i in range(count):
        image, masks = blob_scene(rng)
        Image.fromarray(image).save(path.parent / f"{path.stem}{i}.png")
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)])
        answer = " ".join(f"<ref>Blob</ref><box>[{', '.join(map(str, to_1000(tuple(b), image.shape)))}]</box>"
                          for b in boxes)
        rows.append({"id": f"{path.stem}{i}", "image": f"{path.stem}{i}.png", "regions": [],
                     "conversations": [{"from": "human", "value": "<image>\nWhere is the blob?"},
                                       {"from": "gpt", "value": answer}]})
        truth.append(boxes)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return truth


def test_the_head_is_fitted_on_the_answers_and_lands_in_a_checkpoint(base_model, tmp_path):  # noqa: F811
    rng = np.random.default_rng(0)
    grounded_file(tmp_path / "train.jsonl", rng, 40)
    truth = grounded_file(tmp_path / "test.jsonl", rng, 20)
    assert main(["train-grounding", base_model, "--data", str(tmp_path / "train.jsonl"), "--eval-data",
                 str(tmp_path / "test.jsonl"), "--out", str(tmp_path / "ground"), "--steps", "200"]) == 0
    record = json.loads((tmp_path / "ground" / "grounding_head.json").read_text())
    assert record["kinds"] == ["blob"] and record["examples"] == 40 and record["eval_examples"] == 20
    assert record["loss"]["last"] < record["loss"]["first"] and record["train_hit_rate"] > 0.8
    before = load_file(f"{base_model}/model.safetensors")
    after = load_file(str(tmp_path / "ground" / "final" / "model.safetensors"))
    assert {k for k in after if k not in before} == {f"vision_tower.grounding_head.{n}" for n in
                                                     ("kind_weight", "cell_bias", "feature_mean", "feature_std")}
    assert all((after[k] == v).all() for k, v in before.items())
    model, processor = load_assistant(tmp_path / "ground" / "final")
    assert model.config.vision_config.grounding_kinds == ["blob"]
    # the head's best cell on a held-out image holds a blob's centre far above chance (1/64)
    model.vision_tower.attach_mask_decoder(DECODER)  # untrained: only the head's cells are read here
    segmenter = Segmenter(model.vision_tower)
    hits = 0
    for i, boxes in enumerate(truth):
        encoded = segmenter.encode(np.asarray(Image.open(tmp_path / f"test{i}.png")))
        [cell] = segmenter.ground_cells(encoded, "blob", 1)
        hits += cell in centre_cells(boxes, encoded.letterbox, model.vision_tower.config.grid_size)
    assert hits / len(truth) == pytest.approx(record["eval_hit_rate"]) and hits / len(truth) > 0.3


def test_a_file_without_grounded_answers_is_refused(base_model, tmp_path, capsys):  # noqa: F811
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"id": "a", "image": None, "regions": [], "conversations": [
        {"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}) + "\n")
    assert main(["train-grounding", base_model, "--data", str(path), "--out", str(tmp_path / "g")]) == 2
    assert "no assistant turn with <ref>phrase</ref><box>" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()

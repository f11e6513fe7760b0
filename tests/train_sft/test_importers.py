"""The SLAKE importer on a small fixture in SLAKE's own layout."""

import json

import numpy as np
import pytest
from PIL import Image

from medp_cli import main
from medp_base.data import check_jsonl
from medp_base.importers import import_slake
from medp_base.rle import decode_rle


def qa(qid, img_id, question, answer, lang="en"):
    return {"img_id": img_id, "img_name": f"xmlab{img_id}/source.jpg", "question": question, "answer": answer,
            "q_lang": lang, "location": "Abdomen", "modality": "CT", "answer_type": "OPEN", "base_type": "vqa",
            "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": qid}


def make_slake(root, split: str = "train"):
    """A two-image SLAKE folder in SLAKE's own layout, its QA rows in ``split``.json."""
    labels = np.zeros((80, 100), np.uint8)
    labels[10:40, 10:50] = 1  # liver
    labels[45:70, 60:90] = 2  # spleen
    labels[12:20, 52:58] = 1  # a stray liver-labelled blob outside the liver's box
    for img_id, with_mask in ((0, True), (1, False)):
        folder = root / "imgs" / f"xmlab{img_id}"
        folder.mkdir(parents=True)
        Image.fromarray((labels * 90 + 20).astype(np.uint8)).convert("RGB").save(folder / "source.jpg")
        if with_mask:
            Image.fromarray(labels * 127).save(folder / "mask.png")  # grey levels per organ
        (folder / "detection.json").write_text(json.dumps([{"Liver": [10, 10, 40, 30]},
                                                           {"Spleen": [60, 45, 30, 25]}]))
    rows = [qa(1, 0, "Is the liver healthy?", "Yes"), qa(2, 0, "Which organ is larger, the spleen or the liver?",
                                                          "Liver"),
            qa(3, 0, "肝脏健康吗?", "是", lang="zh"), qa(4, 1, "What modality is used?", "CT")]
    (root / f"{split}.json").write_text(json.dumps(rows, ensure_ascii=False))
    return root


@pytest.fixture
def slake(tmp_path):
    return make_slake(tmp_path / "Slake1.0")


def test_slake_qa_with_organ_masks_and_boxes(slake, tmp_path):
    dst = tmp_path / "data" / "slake_train.jsonl"
    assert import_slake(slake, dst) == 5  # 3 English questions + one region-naming sample per image
    report = check_jsonl(dst)
    assert report.ok, report.errors
    by_id = {s.id: s for s in report.samples}
    liver = by_id["slake-1"]
    assert liver.conversations[0]["value"] == "<image>\nIs the liver <region1> healthy?"
    mask = decode_rle(liver.regions[0]["rle"])
    assert mask.sum() == 30 * 40 and mask[10:40, 10:50].all()  # the stray blob outside the box is not the liver
    both = by_id["slake-2"].conversations[0]["value"]
    assert both == "<image>\nWhich organ is larger, the spleen <region1> or the liver <region2>?"
    assert decode_rle(by_id["slake-2"].regions[0]["rle"])[45:70, 60:90].all()
    assert by_id["slake-4"].regions == []  # no organ named
    naming = by_id["slake-1-regions"]  # image 1 has no mask.png: its organs are boxes
    assert [t["value"] for t in naming.conversations] == ["<image>\nWhat is <region1>?", "Liver",
                                                          "What is <region2>?", "Spleen"]
    assert by_id["slake-1-regions"].regions[1] == {"type": "box", "box": [60.0, 45.0, 90.0, 70.0]}
    assert "slake-3" not in by_id  # Chinese questions only with lang="zh"


def test_slake_captions_for_stage_0_and_the_cli(slake, tmp_path):
    dst = tmp_path / "captions.jsonl"
    assert main(["data", "import-slake", str(slake), str(dst), "--kind", "caption", "--regions", "box"]) == 0
    report = check_jsonl(dst, kind="caption")
    assert report.ok, report.errors
    assert report.samples[0].caption == "CT of the abdomen"
    assert [r["caption"] for r in report.samples[0].regions] == ["Liver", "Spleen"]


def test_bad_slake_files_are_all_reported_and_nothing_is_written(slake, tmp_path):
    (slake / "imgs" / "xmlab0" / "detection.json").write_text(json.dumps([{"Liver": [1, 2, 3]}]))
    (slake / "imgs" / "xmlab1" / "source.jpg").unlink()
    dst = tmp_path / "out.jsonl"
    with pytest.raises(ValueError) as err:
        import_slake(slake, dst)
    assert "2 image(s)" in str(err.value) and "must be [x, y, width, height]" in str(err.value)
    assert "xmlab1/source.jpg" in str(err.value)
    assert not dst.exists()
    assert main(["data", "import-slake", str(slake), str(dst)]) == 2

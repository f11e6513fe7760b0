import json

import numpy as np
import pytest
import torch
from PIL import Image

from assistant import IGNORE_INDEX, from_parts
from medp_cli import main
from medp_base.data import DataError, check_jsonl, load_jsonl
from medp_base.importers import import_llava
from medp_base.rle import encode_rle
from train_sft import SFTCollator, length_grouped_order
from train_sft.config import TrainConfig
from vision_tower import MedPVisionTower

from ..conftest import tiny_llm_dir, tiny_vision_config


def turns(*pairs):
    out = []
    for q, a in pairs:
        out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path)


def write_dataset(tmp_path):
    """A small valid set in the MedP layout: PNG images, every region type, a text-only sample."""
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray((rng.random((80, 100)) * 255).astype(np.uint8)).save(tmp_path / "imgs" / f"{name}.png")
    mask = np.zeros((80, 100), bool)
    mask[10:30, 20:50] = True
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "imgs" / "a_mask.png")
    rows = [
        {"id": "1", "image": "imgs/a.png", "regions": [{"type": "box", "box": [10, 10, 40, 40]}],
         "conversations": turns(("<image>\nWhat is in <region1>?", "A nodule."))},
        {"id": "2", "image": "imgs/b.png",
         "regions": [{"type": "polygon", "points": [[5, 5], [60, 8], [30, 70]]},
                     {"type": "mask", "rle": encode_rle(mask)}, {"type": "mask", "png": "imgs/a_mask.png"},
                     {"type": "points", "points": [[50, 50]], "labels": [1]},
                     {"type": "scribble", "points": [[1, 1], [90, 70]]}],
         "conversations": turns(("Compare <region1>, <region2>, <region3>, <region4> and <region5>.", "Alike."),
                                ("And <region1> alone?", "Round."))},
        {"id": "3", "conversations": [{"from": "system", "value": "Be brief."}] + turns(("Hello", "Hi."))},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


BAD_LINES = [
    ("{not json", "invalid JSON"),
    ('"a string"', "must be a JSON object"),
    (json.dumps({"conversations": []}), "non-empty list"),
    (json.dumps({"conversations": turns(("q", "a"))[:1]}), "the last turn must be the answer"),
    (json.dumps({"conversations": [{"from": "gpt", "value": "a"}]}), "starting with human"),
    (json.dumps({"conversations": [{"from": "robot", "value": "a"}]}), "turn 1 must be"),
    (json.dumps({"image": "imgs/none.png", "conversations": turns(("q", "a"))}), "image not found"),
    (json.dumps({"image": "imgs/a.png", "regions": [{"type": "box", "box": [0, 0, 500, 5]}],
                 "conversations": turns(("<region1>?", "a"))}), "region 1 (box): point (500, 5) is outside the 100x80"),
    (json.dumps({"image": "imgs/a.png", "regions": [{"type": "box", "box": [0, 0, 5, 5]}],
                 "conversations": turns(("<region3>?", "a"))}), "<region3> is mentioned but 1 region(s) were given"),
    (json.dumps({"image": "imgs/a.png", "regions": [{"type": "box", "box": [0, 0, 5, 5]}] * 2,
                 "conversations": turns(("<region1>?", "a"))}), "region(s) 2 given but never mentioned"),
    (json.dumps({"conversations": turns(("<image> q", "a"))}), "<image> placeholder but no image was given"),
    (json.dumps({"image": "imgs/a.png", "regions": [{"type": "mask", "rle": encode_rle(np.ones((5, 5), bool))}],
                 "conversations": turns(("<region1>", "a"))}), "differs from the image size"),
]


def test_valid_file_statistics(dataset):
    report = check_jsonl(dataset)
    assert report.ok and len(report.samples) == 3
    assert report.regions_by_type == {"box": 1, "polygon": 1, "mask": 2, "points": 1, "scribble": 1}
    assert report.turns == 2 + 4 + 3 and report.images_missing == 0
    assert "3 valid samples, 0 bad lines" in report.summary()
    assert [s.messages()[0]["role"] for s in report.samples] == ["user", "user", "system"]


def test_every_bad_line_is_reported_with_file_line_and_reason(dataset):
    good = dataset.read_text()
    dataset.write_text(good + "\n".join(line for line, _ in BAD_LINES) + "\n")
    report = check_jsonl(dataset)
    assert len(report.samples) == 3 and len(report.errors) == len(BAD_LINES)
    for n, ((_, reason), error) in enumerate(zip(BAD_LINES, report.errors), start=4):
        assert error.startswith(f"{dataset}:{n}: ") and reason in error, (reason, error)
    assert report.images_missing == 1
    with pytest.raises(DataError) as err:  # nothing is trained on half-valid data
        load_jsonl(dataset)
    assert str(err.value).count(str(dataset)) == len(BAD_LINES) + 1


def test_medp_data_check_command(dataset, capsys):
    assert main(["data", "check", str(dataset)]) == 0
    assert "3 valid samples" in capsys.readouterr().out
    dataset.write_text(dataset.read_text() + BAD_LINES[0][0] + "\n" + BAD_LINES[7][0] + "\n")
    assert main(["data", "check", str(dataset)]) == 1
    captured = capsys.readouterr()
    assert f"{dataset}:4: invalid JSON" in captured.out and f"{dataset}:5: region 1 (box)" in captured.out
    assert "2 bad lines" in captured.err


def test_llava_import(tmp_path, dataset):
    llava = [{"id": "x1", "image": "imgs/a.png", "conversations": turns(("<image>\nDescribe.", "A scan."))},
             {"id": "x2", "conversations": turns(("Hi", "Hello"))}]
    (tmp_path / "llava.json").write_text(json.dumps(llava))
    assert import_llava(tmp_path / "llava.json", tmp_path / "out.jsonl") == 2
    samples = load_jsonl(tmp_path / "out.jsonl")
    assert [s.id for s in samples] == ["x1", "x2"] and samples[0].regions == []
    with pytest.raises(ValueError, match="item 0 is not a LLaVA sample"):
        (tmp_path / "bad.json").write_text(json.dumps([{"id": 1}]))
        import_llava(tmp_path / "bad.json", tmp_path / "bad.jsonl")


def test_collator_batches_train_the_model(dataset, chat_tokenizer_dir, tmp_path):
    llm = tiny_llm_dir(chat_tokenizer_dir, "llama", tmp_path / "llm")
    torch.manual_seed(0)
    model, processor = from_parts(MedPVisionTower(tiny_vision_config()), llm, image_pool=2)
    samples = load_jsonl(dataset)
    batch = SFTCollator(processor)(samples)
    b, length = batch["input_ids"].shape
    assert b == 3 and batch["pixel_values"].shape[0] == 3 and batch["regions"].num_regions == 5
    lengths = batch["attention_mask"].sum(1)
    for i, sample in enumerate(samples):  # padding carries no labels and no slots
        assert (batch["labels"][i, lengths[i]:] == IGNORE_INDEX).all()
        assert (batch["region_slots"][i, lengths[i]:] == -1).all()
        answers = processor.tokenizer.decode(batch["labels"][i][batch["labels"][i] != IGNORE_INDEX])
        for turn in sample.conversations:
            assert (turn["value"] in answers) == (turn["from"] == "gpt")
    assert (batch["input_ids"][2] == model.config.image_token_id).sum() == 0  # text-only sample
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(25):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("strategy", ["marker", "text", "crop"])
def test_a_baseline_strategy_trains_on_the_regions_given_its_way(dataset, chat_tokenizer_dir, tmp_path, strategy):
    llm = tiny_llm_dir(chat_tokenizer_dir, "llama", tmp_path / "llm")
    model, processor = from_parts(MedPVisionTower(tiny_vision_config()), llm, image_pool=2)
    samples = load_jsonl(dataset)
    native, other = SFTCollator(processor)(samples), SFTCollator(processor, strategy)(samples)
    assert native["regions"].num_regions == 5 and other["regions"].valid.sum() == 0  # no region prompts at all
    assert (other["region_slots"] == -1).all()
    text = processor.tokenizer.decode(other["input_ids"][0])
    assert "<region1>" not in text and ("marked 1" in text or "0-1000" in text)
    changed = not torch.equal(native["pixel_values"][0], other["pixel_values"][0])
    assert changed == (strategy == "marker")  # drawn on; text leaves the pixels, and crop keeps this small image whole
    # (at least 64 px of context: cropping itself is tested in tests/evaluation/test_strategies.py)
    n = int(native["attention_mask"][2].sum())
    assert torch.equal(native["input_ids"][2, :n], other["input_ids"][2, :n])  # a sample without regions: untouched
    assert torch.isfinite(model(**other).loss)
    with pytest.raises(ValueError, match="region_strategy belongs to the align and sft stages"):
        TrainConfig(model="m", data="d", output_dir="o", stage="clip", region_strategy=strategy)
    with pytest.raises(ValueError, match="region_strategy must be one of"):
        TrainConfig(model="m", data="d", output_dir="o", region_strategy="telepathy")


def test_length_grouped_order_is_a_permutation_grouping_lengths():
    lengths = list(np.random.default_rng(0).integers(1, 500, size=230))
    order = length_grouped_order(lengths, batch_size=4, seed=1, mega=10)
    assert sorted(order) == list(range(230))
    first = [lengths[i] for i in order[:40]]
    assert first == sorted(first, reverse=True)
    assert order != length_grouped_order(lengths, batch_size=4, seed=2, mega=10)


def test_a_line_that_is_not_utf8_is_reported_and_the_rest_checked(dataset):
    lines = dataset.read_bytes().splitlines()
    broken = b'{"id": "x", "conversations": [{"from": "human", "value": "caf\xe9"}]}'
    dataset.write_bytes(b"\n".join([lines[0], broken, lines[1], lines[2]]) + b"\n" + BAD_LINES[0][0].encode() + b"\n")
    report = check_jsonl(dataset)
    assert report.errors[0] == f"{dataset}:2: not UTF-8 (byte 0xe9 at column 62)"
    assert report.errors[1].startswith(f"{dataset}:5: invalid JSON")
    assert len(report.samples) == 3


def test_duplicate_ids_are_reported_with_both_line_numbers(dataset):
    lines = dataset.read_text().splitlines()
    dataset.write_text("\n".join(lines + [lines[0], lines[2]]) + "\n")
    report = check_jsonl(dataset)
    assert report.errors == [f"{dataset}:4: duplicate id '1' (first used on line 1)",
                             f"{dataset}:5: duplicate id '3' (first used on line 3)"]


def test_mask_paths_stay_inside_the_data_folder_and_travel_inline_afterwards(dataset, tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    Image.fromarray(np.full((80, 100), 255, np.uint8)).save(outside)
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    escape = dict(rows[0], id="4", regions=[{"type": "mask", "png": f"../{outside.name}"}])
    absolute = dict(rows[0], id="5", regions=[{"type": "mask", "png": str(outside)}])
    dataset.write_text(dataset.read_text() + json.dumps(escape) + "\n" + json.dumps(absolute) + "\n")
    report = check_jsonl(dataset)
    assert report.errors[0].startswith(f"{dataset}:4: region 1 (mask): mask path") and "leaves the folder" in \
        report.errors[0]
    assert report.errors[1].startswith(f"{dataset}:5: region 1 (mask): mask path") and "is absolute" in report.errors[1]
    png_region = report.samples[1].regions[2]  # {"type": "mask", "png": "imgs/a_mask.png"} in the file
    assert "png" not in png_region and png_region["rle"]["size"] == [80, 100]

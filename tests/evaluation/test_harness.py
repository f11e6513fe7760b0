"""`medp eval` end to end: a tiny MedP in this process and the same checkpoint behind the real vLLM
server, on MedSynth's test split and on a SLAKE folder; resuming; the reports."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluation import load_benchmark
from evaluation.benchmark import sample_items
from evaluation.medsynth import generate
from evaluation.runner import read_predictions
from medp_base.image_io import load_image

from ..conftest import KEY
from ..train_sft.test_importers import make_slake


def medp(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.Popen([sys.executable, "-m", "medp_cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def finish(proc: subprocess.Popen, rc: int = 0) -> str:
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == rc, output[-3000:]
    return output


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    generate(out, seed=0, images_per_background=1, backgrounds=["mni152-axial-z+62", "ct-CT_small"], sheet_samples=0)
    return out / "test.jsonl"


def eval_args(bench, out, *extra):
    return ["eval", "run", "--benchmark", str(bench), "--out", str(out), "--max-tokens", "8", *extra]


@pytest.fixture(scope="module")
def local_run(bench, checkpoint, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("runs") / "local"
    finish(medp(*eval_args(bench, out, "--local", checkpoint)))
    return out


def predictions(run: Path) -> dict:
    return {k: (v["prediction"], v["error"]) for k, v in read_predictions(run / "predictions.jsonl").items()}


def test_a_run_writes_predictions_scores_and_its_report(local_run, bench):
    items = load_benchmark(bench)
    assert len(predictions(local_run)) == len(items) > 5
    record = json.loads((local_run / "run.json").read_text())
    assert record["strategy"] == "native" and record["model"]["temperature"] == 0.0 and record["versions"]["torch"]
    result = json.loads((local_run / "metrics.json").read_text())
    assert result["overall"]["n"] == len(items)
    assert {i.task for i in items} <= set(result["by_task"]) and "CT" in result["by_modality"]
    report = (local_run / "report.md").read_text()
    assert "## Per task" in report and "| grounding | acc@0.5 |" in report and "## Failures" in report
    assert {i.task for i in items} <= set(result["baselines"]) and "best constant" in report
    assert result["invented_facts"]["all"]["n"] == len(items) and "## Invented facts" in report
    assert result["invented_facts"]["all"]["reference"]["location"] == 0.0  # MedSynth locates only where it can
    chosen = {i.task for i in items} - {i.task for i in items if not i.meta.get("choices")}
    for task in chosen:  # tasks of multiple-choice questions: chance over the choices; a constant among them
        mine = [i for i in items if i.task == task]
        base = result["baselines"][task]
        assert base["chance"] == pytest.approx(sum(1 / len(i.meta["choices"]) for i in mine) / len(mine)), task
        assert any(base["answers"][0]["answer"] in i.meta["choices"] for i in mine) and base["constant"] > 0
    wordings = result["by_wording"]  # every item counted once, under how its question is worded
    assert sum(c["n"] for cells in wordings.values() for c in cells.values()) == len(items)
    held_out = sum(i.meta["wording_held_out"] for i in items)
    assert held_out and sum(c.get("held-out wording", {}).get("n", 0) for c in wordings.values()) == held_out
    assert "## Per wording" in report and "held-out − template" in report
    for png in ("per_task.png", "iou.png", "failures.png"):
        assert (local_run / png).stat().st_size > 1000


def test_a_killed_run_resumes_to_the_same_predictions_and_metrics(local_run, bench, checkpoint, tmp_path):  # noqa: F811
    out = tmp_path / "killed"
    proc = medp(*eval_args(bench, out, "--local", checkpoint), start_new_session=True)
    sink = out / "predictions.jsonl"
    deadline = time.time() + 300
    while not (sink.exists() and len(sink.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it was killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with open(sink, "a") as f:
        f.write('{"id": "half-writ')  # as if killed mid-line
    assert len(predictions(out)) < len(predictions(local_run))
    output = finish(medp(*eval_args(bench, out, "--local", checkpoint)))
    assert "items" in output
    assert predictions(out) == predictions(local_run)
    assert (out / "scores.jsonl").read_text() == (local_run / "scores.jsonl").read_text()
    assert json.loads((out / "run.json").read_text())["resumed"] == 1
    # the same folder with another setup is refused, not mixed
    refused = finish(medp(*eval_args(bench, out, "--local", checkpoint, "--strategy", "text")), rc=2)
    assert "holds a run with a different strategy" in refused


def test_served_models_against_the_local_run_and_the_comparison(local_run, bench, server, tmp_path):  # noqa: F811
    url = ["--url", f"{server}/v1", "--api-key", KEY]
    finish(medp(*eval_args(bench, tmp_path / "served", *url)))
    # the same checkpoint behind vLLM, regions sent natively: the same greedy answers as in-process
    assert predictions(tmp_path / "served") == predictions(local_run)
    finish(medp(*eval_args(bench, tmp_path / "marker", *url, "--strategy", "marker", "--concurrency", "4")))
    assert json.loads((tmp_path / "marker" / "run.json").read_text())["model"]["backend"] == "openai"
    finish(medp("eval", "compare", str(local_run), str(tmp_path / "marker"), "--out", str(tmp_path / "cmp")))
    comparison = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "medp · native" in comparison and "· marker" in comparison and "| grounding | acc@0.5 |" in comparison
    assert (tmp_path / "cmp" / "comparison_tasks.png").exists() and (tmp_path / "cmp" / "comparison_iou.png").exists()


def test_a_slake_folder_is_evaluated_with_organ_masks_as_regions(checkpoint, tmp_path):  # noqa: F811
    root = make_slake(tmp_path / "Slake1.0", split="test")
    finish(medp("eval", "run", "--benchmark", str(root), "--out", str(tmp_path / "slake"), "--local", checkpoint,
                "--max-tokens", "4"))
    items = load_benchmark(tmp_path / "slake" / "benchmark-slake-test.jsonl")
    assert [i.question for i in items] == ["Is the liver <region1> healthy?",
                                           "Which organ is larger, the spleen <region1> or the liver <region2>?",
                                           "What modality is used?"]
    assert items[0].regions[0]["type"] == "mask" and items[0].task == "organ" and items[0].modality == "CT"
    assert json.loads((tmp_path / "slake" / "metrics.json").read_text())["overall"]["n"] == 3


def test_a_bad_benchmark_line_is_reported_with_file_and_line(tmp_path, checkpoint):  # noqa: F811
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "a"}]}\n'
                   "{not json\n")
    output = finish(medp("eval", "run", "--benchmark", str(bad), "--out", str(tmp_path / "o"), "--local", checkpoint),
                    rc=2)
    assert f"{bad}:2: invalid JSON" in output


def test_an_unreachable_endpoint_is_a_clear_error(bench, tmp_path):
    output = finish(medp(*eval_args(bench, tmp_path / "o", "--url", "http://127.0.0.1:9/v1", "--model", "m")), rc=2)
    assert "the endpoint http://127.0.0.1:9/v1 failed" in output and "run the same command again" in output


def test_a_sample_is_seeded_and_a_resume_with_other_items_is_refused(bench, checkpoint, tmp_path):  # noqa: F811
    items = load_benchmark(bench)
    first, again, other = (sample_items(items, 4, seed) for seed in (0, 0, 1))
    assert [i.id for i in first] == [i.id for i in again] != [i.id for i in other]
    assert [i.id for i in first] == [i.id for i in items if i in first]  # file order kept
    out = tmp_path / "sampled"
    finish(medp(*eval_args(bench, out, "--local", checkpoint, "--sample", "4")))
    assert json.loads((out / "metrics.json").read_text())["overall"]["n"] == 4
    refused = finish(medp(*eval_args(bench, out, "--local", checkpoint, "--limit", "4")), rc=2)
    assert "different item_ids" in refused


def test_a_run_can_be_cut_to_some_tasks(bench, checkpoint, tmp_path):  # noqa: F811
    wanted = {"yes/no", "counting"}
    out = tmp_path / "tasks"
    finish(medp(*eval_args(bench, out, "--local", checkpoint, "--task", "yes/no", "--task", "counting")))
    items = {i.id: i.task for i in load_benchmark(bench)}
    answered = predictions(out)
    assert answered and {items[i] for i in answered} == wanted
    assert len(answered) == sum(task in wanted for task in items.values())
    refused = finish(medp(*eval_args(bench, tmp_path / "none", "--local", checkpoint, "--task", "yes-no")), rc=2)
    assert "no items of task yes-no; its tasks: " in refused and "yes/no" in refused


def test_the_location_probe_scores_the_feature_grids_and_the_box_state_on_the_grounding_items(bench, checkpoint, tmp_path):
    from assistant import MedPConfig

    refused = finish(medp("eval", "location-probe", "--model", checkpoint, "--train", str(bench.parent / "train.jsonl"),
                          "--test", str(bench), "--out", str(tmp_path / "probe")), rc=2)
    assert "train.jsonl: no grounding items with boxes" in refused  # this tiny split's training images have none
    finish(medp("eval", "location-probe", "--model", checkpoint, "--train", str(bench), "--test", str(bench),
                "--out", str(tmp_path / "probe"), "--steps", "20", "--segmenter", checkpoint))
    result = json.loads((tmp_path / "probe" / "location_probe.json").read_text())
    config = MedPConfig.from_pretrained(checkpoint)
    grids = {"image tokens": round(config.image_tokens ** 0.5), "tower patches": config.vision_config.grid_size,
             "LLM state at the box": round(config.image_tokens ** 0.5)}
    assert {r["features"]: r["grid"] for r in result["rows"]} == grids
    assert result["items"]["test"] == sum(i.task == "grounding" for i in load_benchmark(bench)) > 0
    for r in result["rows"]:
        assert r["chance"] == 1 / r["grid"] ** 2 and 0 <= r["test"] <= 1 and 0 <= r["best constant"] <= 1
        assert all(0 <= r[k] <= 1 for k in ("cell acc@0.5", "cell iou", "decoder acc@0.5", "decoder iou"))
    assert "| image tokens |" in (tmp_path / "probe" / "location_probe.md").read_text()
    assert result["segmenter"] == checkpoint


def test_zero_shot_classifies_each_identification_region_among_its_choices(bench, tmp_path):
    from transformers import AutoTokenizer

    from vision_tower import default_text_tower_path

    from ..vision_tower.test_clip_model import TEXT_CONFIGS, tiny_clip

    clip = tiny_clip(AutoTokenizer.from_pretrained(str(default_text_tower_path())), TEXT_CONFIGS["bert"])
    clip.save_pretrained(tmp_path / "clip")
    finish(medp("eval", "zero-shot", "--clip", str(tmp_path / "clip"), "--benchmark", str(bench),
                "--out", str(tmp_path / "zs")))
    result = json.loads((tmp_path / "zs" / "zero_shot.json").read_text())
    identification = [i for i in load_benchmark(bench) if i.task == "identification"]
    assert result["overall"]["n"] == len(identification) > 0
    assert result["overall"]["chance"] == pytest.approx(
        sum(1 / len(i.meta["choices"]) for i in identification) / len(identification))
    hits = []  # the classifier's argmax among each item's choices, counted against the label
    for item in identification:
        probs = clip.classify(load_image(item.image).pixels, item.regions, item.meta["choices"])[0]
        assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
        hits.append(item.meta["choices"][int(probs.argmax())] == item.meta["label"])
    assert result["overall"]["accuracy"] == pytest.approx(sum(hits) / len(hits))
    assert set(result["per_modality"]) == {i.modality for i in identification}
    assert "| all |" in (tmp_path / "zs" / "zero_shot.md").read_text()


def test_refine_boxes_replaces_each_box_by_its_masks_box_inside_the_prompt(local_run, bench, checkpoint, tmp_path):  # noqa: F811
    """A run whose grounding answers are the truth made loose: each box becomes a box prompt, and comes
    back as the box of the decoder's mask, which the tidied mask keeps inside the prompt (+ its margin)."""
    import shutil

    from medp_base.grounding import parse_grounded
    from medp_base.masks import BOX_MARGIN

    raw = tmp_path / "raw"
    shutil.copytree(local_run, raw)
    items = {i.id: i for i in load_benchmark(bench)}
    rows = read_predictions(raw / "predictions.jsonl")
    loose = {}
    for item_id, row in rows.items():
        if items[item_id].task == "grounding":
            boxes = [(max(0, x1 - 60), max(0, y1 - 60), min(1000, x2 + 60), min(1000, y2 + 60))
                     for x1, y1, x2, y2 in (b.box_1000 for b in parse_grounded(items[item_id].answer, (1000, 1000)).boxes)]
            row["prediction"] = " ".join(f"<ref>it</ref><box>[{', '.join(map(str, b))}]</box>" for b in boxes)
            loose[item_id] = boxes
    assert loose
    (raw / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows.values()))
    (raw / "metrics.json").write_text(json.dumps({"overall": {}}))
    output = finish(medp("eval", "refine-boxes", str(raw), "--segmenter", checkpoint, "--out", str(tmp_path / "tight")))
    assert "refined" in output
    refined = read_predictions(tmp_path / "tight" / "predictions.jsonl")
    assert refined.keys() == rows.keys()
    changed = 0
    for item_id, row in refined.items():
        if item_id not in loose:
            assert row["prediction"] == rows[item_id]["prediction"]
            continue
        h, w = row["sent_size"]
        tight = [b.box_1000 for b in parse_grounded(row["prediction"], (h, w)).boxes]
        assert len(tight) == len(loose[item_id])
        for (x1, y1, x2, y2), (a1, b1, a2, b2) in zip(loose[item_id], tight):
            # the tidy margin (+ 2 px), a pixel of flooring and the rounding to 0-1000: 4 px in all
            mx, my = (BOX_MARGIN * (x2 - x1) * w / 1000 + 4) * 1000 / w, (BOX_MARGIN * (y2 - y1) * h / 1000 + 4) * 1000 / h
            assert x1 - mx <= a1 < a2 <= x2 + mx and y1 - my <= b1 < b2 <= y2 + my
        changed += row["boxes_refined"]
    assert changed > 0
    record = json.loads((tmp_path / "tight" / "run.json").read_text())
    assert record["boxes_refined_by"] == checkpoint and record["raw_run"] == str(raw)
    assert "grounding" in json.loads((tmp_path / "tight" / "metrics.json").read_text())["by_task"]

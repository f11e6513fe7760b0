"""The shipped default model: assembled from the committed parts and the SmolLM2 GGUF, verified,
cached, reused — and it really answers region questions on MedSynth test images it never saw."""

import json
import os
import shutil
import subprocess
import sys

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from safetensors.torch import load_file, save_file

from assistant import load_assistant
from assistant.chat import ChatSession, SamplingParams
from assistant.default_model import PARTS_DIR, AssemblyError, assemble, default_model_path
from assistant.default_model.assemble import CHECKSUMS_FILE, MANIFEST_FILE, PARTS_FILE, sha256
from assistant.default_model.pack import pack_tower_module
from evaluation.benchmark import load_benchmark
from evaluation.medsynth import generate
from evaluation.segmentation import dice, iou, load_targets, tight_box
from medp_base.cases import SAMPLES, read_cases
from medp_base.clicks import corrective_click
from medp_base.image_io import load_image
from vision_tower.segmenter import Segmenter, SegmentPrompt

MAX_PARTS_MB = 40
BOX_DICE_FLOOR = 0.6  # a regression floor (an untrained decoder: < 0.3; measured 0.67), not a result:
# MODEL_CARD.md has the box Dice beside its baselines (filling the box does better on these round findings)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("medp-cache")
    old = os.environ.get("MEDP_CACHE")
    os.environ["MEDP_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["MEDP_CACHE"]
    else:
        os.environ["MEDP_CACHE"] = old


@pytest.fixture(scope="module")
def default_dir(cache):
    return default_model_path()


def test_the_committed_parts_are_small_and_complete():
    size = sum(p.stat().st_size for p in PARTS_DIR.iterdir() if p.suffix in (".json", ".safetensors"))
    assert size < MAX_PARTS_MB * 2**20
    manifest = json.loads((PARTS_DIR / MANIFEST_FILE).read_text())
    assert set(manifest["sha256"]) == {PARTS_FILE, "config.json", "SmolLM2-135M-Instruct.Q4_1.gguf"}


def test_assembled_once_then_reused_and_reassembled_when_damaged(default_dir, cache):
    assert (default_dir / "model.safetensors").exists() and (default_dir / CHECKSUMS_FILE).exists()
    stamp = (default_dir / "model.safetensors").stat().st_mtime_ns
    assert default_model_path() == default_dir  # reused: checksums match, nothing written
    assert (default_dir / "model.safetensors").stat().st_mtime_ns == stamp
    config = default_dir / "config.json"
    config.write_text(config.read_text().replace('"medp"', '"medp" ', 1))  # a changed file in the cache
    assert default_model_path() == default_dir
    assert (default_dir / "model.safetensors").stat().st_mtime_ns != stamp  # assembled again
    assert json.loads(config.read_text())["model_type"] == "medp"


def test_a_changed_part_or_a_wrong_probe_is_refused(tmp_path):
    parts = tmp_path / "parts"
    shutil.copytree(PARTS_DIR, parts, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    manifest = json.loads((parts / MANIFEST_FILE).read_text())
    with open(parts / PARTS_FILE, "r+b") as f:  # one flipped byte in the weights
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(AssemblyError, match="sha256"):
        assemble(tmp_path / "out", parts)
    shutil.copy(PARTS_DIR / PARTS_FILE, parts / PARTS_FILE)
    manifest["probe"]["logits"] = [v + 1.0 for v in manifest["probe"]["logits"]]  # a model that is not this one
    (parts / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(AssemblyError, match="probe"):
        assemble(tmp_path / "out", parts)
    assert not (tmp_path / "out").exists()  # nothing half-written


def tower_run(path, tensors: dict) -> str:
    """A run folder as ``medp train`` leaves it: ``final/`` with these weights and the committed config."""
    (path / "final").mkdir(parents=True)
    save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()},
              str(path / "final" / "model.safetensors"))
    shutil.copy(PARTS_DIR / "config.json", path / "final" / "config.json")
    return str(path)


def test_tower_modules_pack_in_the_recipes_order(tmp_path):
    # run.sh packs the mask decoder (its run has the parts' grounding head), then a grounding head whose run was
    # trained on parts that had no mask decoder yet
    parts = tmp_path / "parts"
    shutil.copytree(PARTS_DIR, parts, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    shipped = load_file(str(parts / PARTS_FILE))
    decoder, head = "vision_tower.mask_decoder.", "vision_tower.grounding_head."
    torch.manual_seed(0)
    modules = {k for k, v in shipped.items() if k.startswith((decoder, head)) and v.is_floating_point()}
    retrained = {k: v.float() + 0.01 * torch.randn(v.shape) if k in modules else v
                 for k, v in shipped.items() if k.startswith("vision_tower.")}
    decoder_run = tower_run(tmp_path / "seg",
                            {k: shipped[k] if k.startswith(head) else v for k, v in retrained.items()})
    head_run = tower_run(tmp_path / "ground", {k: v for k, v in retrained.items() if not k.startswith(decoder)})
    pack_tower_module(decoder_run, "mask_decoder", parts)
    manifest = pack_tower_module(head_run, "grounding_head", parts)
    packed = load_file(str(parts / PARTS_FILE))
    assert packed.keys() == shipped.keys()
    for key, value in retrained.items():  # both modules are the runs' (in 16-bit storage), the rest unchanged
        expected = value.float() if key in modules else shipped[key].float()
        torch.testing.assert_close(packed[key].float(), expected, atol=1e-3, rtol=1e-3)
        assert key not in modules or not torch.equal(packed[key].float(), shipped[key].float())
    assert manifest["sha256"]["parts.safetensors"] == sha256(parts / PARTS_FILE)
    assemble(tmp_path / "assembled", parts)  # checksums and probe hold

    other_tower = {k: v + 0.01 if k.startswith("vision_tower.embeddings.") else v for k, v in retrained.items()}
    with pytest.raises(ValueError, match="another tower"):
        pack_tower_module(tower_run(tmp_path / "other", other_tower), "grounding_head", parts)
    no_head = {k: v for k, v in retrained.items() if not k.startswith(head)}
    with pytest.raises(ValueError, match="no grounding head"):
        pack_tower_module(tower_run(tmp_path / "no-head", no_head), "grounding_head", parts)
    assert sha256(parts / PARTS_FILE) == manifest["sha256"]["parts.safetensors"]  # refused runs change nothing


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """MedSynth test scenes of every modality, drawn with another seed than the model card's."""
    out = tmp_path_factory.mktemp("held-out")
    generate(out, seed=1, images_per_background=4, sheet_samples=0,
             backgrounds=["x-ray-RG3", "ct-", "mr-", "ultrasound-", "fundus-test", "tissue-test", "mni152-axial-z+62"])
    return load_benchmark(out / "test.jsonl")


def answered(default_dir, items, max_new_tokens: int = 16) -> list[tuple[str, bool, str]]:
    """(label, right, answer) of each one-region item, asked of the default model as in the chat."""
    model, processor = load_assistant(default_dir)
    results = []
    for item in items:
        chat = ChatSession(model, processor, load_image(item.image).pixels)
        chat.add_region(item.regions[0])
        answer = chat.ask(item.question, SamplingParams(max_new_tokens=max_new_tokens))
        results.append((item.meta["label"], item.score(answer, [])["accuracy"] == 1.0, answer))
    return results


def test_identifies_findings_on_unseen_medsynth_test_images(default_dir, held_out):
    # 80 questions: on the 35 of two scenes per background, the shipped model and the one before it got
    # 18 and 19 (a majority is 18); on these 80, 43 each, the 300-step modality-balanced model 44 and the
    # shipped model (fifth update) 55 (MODEL_CARD.md; the fourth update's model was not counted on them)
    items = [i for i in held_out if i.task == "identification"]
    assert len(items) >= 60
    choices = {i.id: len(i.meta["choices"]) for i in items}
    results = [(label, ok, choices[i.id]) for i, (label, ok, _) in zip(items, answered(default_dir, items))]
    assert sum(ok for _, ok, _ in results) > len(results) / 2, results  # a majority right
    # and more findings named than guessing among each item's choices would (a model that always says
    # "normal tissue" names none); the card reports how far this model is from naming most of them
    findings = [(ok, n) for label, ok, n in results if label != "normal tissue"]
    assert sum(ok for ok, _ in findings) > sum(1 / n for _, n in findings), results


YES_NO_FLOOR = 0.65  # chance and the best constant 0.5; the shipped model: 41 of these 54 (0.76; 20 of 27
# "yes", 21 of 27 "no": six of the seven backgrounds are not brain MRI, where it is 0.767 on the model
# card's test split, 0.866 with brain MRI), the model before it 0.58 on the card's 336 (MODEL_CARD.md)


def test_answers_yes_no_about_a_region_on_unseen_medsynth_test_images(default_dir, held_out):
    items = [i for i in held_out if i.task == "yes/no"]
    assert len(items) >= 40 and {i.meta["label"] for i in items} == {"yes", "no"}
    results = answered(default_dir, items, max_new_tokens=24)
    assert sum(ok for _, ok, _ in results) > YES_NO_FLOOR * len(results), results
    for label in ("yes", "no"):  # more right than wrong on each kind of question: not one answer to all
        verdicts = [ok for gold, ok, _ in results if gold == label]
        assert sum(verdicts) > len(verdicts) / 2, (label, results)


GROUNDING_FLOOR = 0.2  # a regression floor on ~20 held-out questions (the LLM's own boxes: 0.000; the best
# constant box: 0.037; measured on all 269 test questions: MODEL_CARD.md), not a result


def test_grounds_findings_on_unseen_medsynth_test_images_with_the_grounding_head(default_dir, tmp_path):
    from evaluation.metrics import box_scores
    from medp_base.grounding import parse_grounded

    generate(tmp_path, seed=1, images_per_background=2, sheet_samples=0,
             backgrounds=["x-ray-RG3", "ct-", "ultrasound-", "mni152-axial-z+62"])
    items = [i for i in load_benchmark(tmp_path / "test.jsonl") if i.task == "grounding"]
    assert len(items) >= 10
    model, processor = load_assistant(default_dir)
    scores, placed = [], 0
    for item in items:
        image = load_image(item.image).pixels
        chat = ChatSession(model, processor, image)
        answer = chat.ask(item.question, SamplingParams(max_new_tokens=64))
        boxes = parse_grounded(answer, image.shape[:2]).boxes
        placed += bool(chat.grounding)
        assert [list(b.box_1000) for b in boxes][:len(chat.grounding)] == [g["box_1000"] for g in chat.grounding]
        scores.append(box_scores([b.box for b in boxes], [tuple(b) for b in item.meta["boxes"]])["acc@0.5"])
    assert placed >= len(items) / 2, placed  # the head placed the boxes of most answers
    assert np.mean(scores) > GROUNDING_FLOOR, scores


def test_chat_and_serve_use_the_default_model(default_dir, cache):
    env = {**os.environ, "MEDP_CACHE": str(cache)}
    case = read_cases()[0]
    image = SAMPLES / case["image"]
    chat = subprocess.run([sys.executable, "-m", "medp_cli", "chat", "--image", str(image), "--region",
                           json.dumps(case["regions"][0]), "What is in <region1>?"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert chat.returncode == 0, chat.stderr
    assert case["truth"][0] in chat.stdout.lower()
    from argparse import Namespace

    from assistant.serving.cli import vllm_command

    args = Namespace(model="default", host="127.0.0.1", port=8000, allow_no_key=False, served_model_name=None,
                     max_model_len=None, max_regions=None, dtype=None, kv_cache_gib=2.0, api_key=None,
                     no_grounding=False)
    command, _ = vllm_command(args, [])
    assert command[command.index("--model") + 1] == str(default_dir)
    assert command[command.index("--served-model-name") + 1] == "medp-default"
    assert "assistant.serving.grounding_route.GroundingRoute" in command
    args.no_grounding = True
    assert "assistant.serving.grounding_route.GroundingRoute" not in vllm_command(args, [])[0]


def test_demo_answers_the_bundled_cases_and_draws_them(default_dir, cache, tmp_path):
    result = subprocess.run([sys.executable, "-m", "medp_cli", "demo", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "MEDP_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    cases = read_cases()
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(c["name"] for c in cases)
    questions = sum(len(c["regions"]) + len(c["grounding"]) for c in cases)
    assert len((tmp_path / "answers.md").read_text().splitlines()) == 2 + questions
    assert result.stdout.count("✓") + result.stdout.count("✗") == questions
    assert f"/{questions} correct" in result.stdout  # how many: MODEL_CARD.md (identification is tested above)


def test_the_committed_config_names_no_path_of_the_machine_that_built_it():
    from assistant.default_model import PARTS_DIR

    def strings(node):
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        return [node] if isinstance(node, str) else []

    config = json.loads((PARTS_DIR / "config.json").read_text())
    assert not [s for s in strings(config) if s.startswith("/") or "site-packages" in s]


def test_segments_unseen_medsynth_findings_and_refines_with_clicks(default_dir, tmp_path):
    """Box prompts on findings of test backgrounds the decoder never saw; then a deliberately bad
    previous mask (the truth shifted by half its width) refined by one corrective click."""
    generate(tmp_path, seed=2, images_per_background=2, sheet_samples=0,
             backgrounds=["x-ray-RG3", "ct-", "mr-", "ultrasound-", "fundus-test", "tissue-test"])
    targets = load_targets(tmp_path / "seg_test.jsonl")
    assert len(targets) >= 15
    segmenter = Segmenter.from_pretrained(default_dir)
    box_dice, before, after = [], [], []
    for target in targets:
        image = segmenter.encode(target.pixels, target.spacing)
        box = {"type": "box", "box": tight_box(target.truth)}
        [result] = segmenter.predict(image, [SegmentPrompt(box)])
        box_dice.append(dice(result.mask, target.truth))
        x1, _, x2, _ = box["box"]
        bad = np.roll(target.truth, int((x2 - x1) / 2) + 1, axis=1)
        [refined] = segmenter.predict(image, [SegmentPrompt(box, [corrective_click(bad, target.truth)], bad)])
        before.append(iou(bad, target.truth))
        after.append(iou(refined.mask, target.truth))
    assert np.mean(box_dice) > BOX_DICE_FLOOR, box_dice
    assert np.mean(after) > np.mean(before), (before, after)


def test_medp_segment_writes_a_dicom_seg_and_a_nifti_mask_with_measurements(default_dir, cache, tmp_path):
    env = {**os.environ, "MEDP_CACHE": str(cache)}
    source = get_testdata_file("CT_small.dcm")
    box = json.dumps({"type": "box", "box": [20, 20, 90, 90]})
    click = json.dumps({"type": "points", "points": [[64, 100]]})
    result = subprocess.run([sys.executable, "-m", "medp_cli", "segment", source, "--region", box, "--region", click,
                             "--out", str(tmp_path / "seg.dcm"), "--overlay", str(tmp_path / "overlay.png")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert "| <region1> | box |" in result.stdout and "| <region2> | points |" in result.stdout
    assert "mm²" in result.stdout
    seg = hd.seg.segread(tmp_path / "seg.dcm")  # one SEG, a segment per region
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["region1", "region2"]
    ct = pydicom.dcmread(source)
    assert seg.StudyInstanceUID == ct.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == ct.SOPInstanceUID
    assert (tmp_path / "overlay.png").stat().st_size > 1000

    volume = np.zeros((40, 48, 30), np.float32)  # a bright ball in a NIfTI volume with a non-trivial affine
    zz, yy, xx = np.meshgrid(np.arange(40), np.arange(48), np.arange(30), indexing="ij")
    volume[(zz - 20) ** 2 + (yy - 24) ** 2 + (xx - 15) ** 2 < 64] = 1000
    affine = np.diag([-1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = [30, -20, 5]
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "ball.nii.gz")
    result = subprocess.run([sys.executable, "-m", "medp_cli", "segment", str(tmp_path / "ball.nii.gz"), "--plane",
                             "axial", "--slice", "15", "--region", json.dumps({"type": "box", "box": [8, 12, 32, 36]}),
                             "--out", str(tmp_path / "ball-mask.nii.gz")], capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr
    written = nib.load(tmp_path / "ball-mask.nii.gz")
    np.testing.assert_array_equal(written.affine, affine)
    assert written.shape == volume.shape and np.asarray(written.dataobj)[:, :, 15].any()
    assert not np.asarray(written.dataobj)[:, :, :15].any()

    bad = subprocess.run([sys.executable, "-m", "medp_cli", "segment", source, "--region",
                          json.dumps({"type": "box", "box": [0, 0, 900, 10]})], capture_output=True, text=True,
                         timeout=600, env=env)
    assert bad.returncode == 2 and "outside the 128x128 image" in bad.stderr


def test_a_continued_runs_adapter_stacks_on_the_shipped_one():
    import torch

    from assistant.default_model.pack import stacked_factors

    g = torch.Generator().manual_seed(0)
    first = {"lora.q.A": torch.randn(2, 5, generator=g), "lora.q.B": torch.randn(4, 2, generator=g)}
    second = {"lora.q.A": torch.randn(3, 5, generator=g), "lora.q.B": torch.randn(4, 3, generator=g),
              "lora.v.A": torch.randn(3, 5, generator=g), "lora.v.B": torch.randn(6, 3, generator=g)}
    both = stacked_factors(first, 2.0, second, 0.5)
    assert both["lora.q.A"].shape == (5, 5) and both["lora.q.B"].shape == (4, 5)
    expected = 2.0 * first["lora.q.B"] @ first["lora.q.A"] + 0.5 * second["lora.q.B"] @ second["lora.q.A"]
    assert torch.allclose(2.0 * both["lora.q.B"] @ both["lora.q.A"], expected, atol=1e-5)
    assert torch.allclose(2.0 * both["lora.v.B"] @ both["lora.v.A"], 0.5 * second["lora.v.B"] @ second["lora.v.A"],
                          atol=1e-5)

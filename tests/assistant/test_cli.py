import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel

from medp_cli import main

from ..conftest import tiny_vision_config


def run_medp(*args):
    return subprocess.run([sys.executable, "-m", "medp_cli", *args], capture_output=True, text=True, timeout=300)


def test_encode_without_an_image_encodes_the_bundled_dicom_and_plots(tmp_path):
    result = run_medp("encode", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "RG1_UNCI.dcm (CR, 1841x1955 px)" in result.stdout
    for i in range(1, 6):
        assert f"<region{i}>" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert [f["kind"] for f in report["findings"]] == ["polygon", "box", "points", "scribble", "polygon"]
    assert all(f["area_patches"] > 0 for f in report["findings"])
    sim = np.array(report["region_similarity"])
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-3)
    with Image.open(tmp_path / "regions.png") as im:
        assert im.width > 600 and im.height > 400


def make_png(tmp_path):
    yy, xx = np.mgrid[0:80, 0:100]
    Image.fromarray((127 + 120 * np.sin(xx / 6) * np.cos(yy / 9)).astype(np.uint8)).save(tmp_path / "scan.png")
    return tmp_path / "scan.png"


def test_encode_with_a_saved_medp_tower_and_an_hf_clip_folder(tmp_path, capsys):
    png = make_png(tmp_path)
    regions = json.dumps([{"type": "box", "box": [5, 5, 40, 40]}, {"type": "scribble", "points": [[50, 50], [90, 70]]}])
    from vision_tower import MedPVisionTower

    torch.manual_seed(0)
    MedPVisionTower(tiny_vision_config()).save_pretrained(tmp_path / "tower")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                     num_attention_heads=4, image_size=32, patch_size=8)).save_pretrained(tmp_path / "clip")
    for tower in ("tower", "clip"):
        out = tmp_path / f"out_{tower}"
        assert main(["encode", str(png), "--regions", regions, "--tower", str(tmp_path / tower), "--out", str(out)]) == 0
        assert (out / "regions.png").exists()
        assert "<region2>  scribble" in capsys.readouterr().out
    (tmp_path / "regions.json").write_text(regions)
    assert main(["encode", str(png), "--regions", f"@{tmp_path / 'regions.json'}", "--tower", str(tmp_path / "tower"),
                 "--out", str(tmp_path / "o")]) == 0


def test_bad_input_gives_a_clear_error_and_exit_code_2(tmp_path, capsys):
    png = make_png(tmp_path)
    cases = {
        json.dumps([{"type": "box", "box": [5, 5, 400, 40]}]): "region 1 (box): point (400, 40) is outside the 100x80 image",
        json.dumps([{"type": "polygon", "points": [[1, 1], [2, 2], [1, 1]]}]): "at least 3 distinct vertices",
        "[{not json": "Expecting property name",
        json.dumps({"type": "box"}): "must be a JSON list",
        json.dumps([{"type": "mask", "png": "/etc/passwd"}]): "is absolute",
        json.dumps([{"type": "mask", "png": "../../../etc/passwd"}]): "leaves the folder",
    }
    for regions, message in cases.items():
        assert main(["encode", str(png), "--regions", regions, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    assert main(["encode", str(tmp_path / "broken.dcm"), "--regions", "[]", "--out", str(tmp_path / "x")]) == 2
    assert "broken.dcm" in capsys.readouterr().err


def test_segment_reads_a_region_from_json_or_a_file_and_refuses_anything_else(tmp_path):
    from assistant.segment_cli import read_region

    box = {"type": "box", "box": [1, 2, 30, 40]}
    (tmp_path / "prompt.json").write_text(json.dumps(box))
    assert read_region(json.dumps(box)) == read_region(f"@{tmp_path / 'prompt.json'}") == box
    for bad, message in {"{not json": "is not JSON", json.dumps([box]): "one region object, got list"}.items():
        with pytest.raises(ValueError, match=message):
            read_region(bad)


@pytest.mark.parametrize("command", [["chat", "--model", "{missing}", "hello"],
                                     ["segment", "{png}", "--model", "{missing}", "--region",
                                      '{"type": "points", "points": [[5, 5]], "labels": [1]}', "--out", "{out}"],
                                     ["serve", "{missing}"]])
def test_a_checkpoint_folder_that_does_not_exist_is_named_in_the_error(tmp_path, capsys, command):
    """Not transformers' "Repo id must use alphanumeric chars": a missing folder is said to be missing."""
    png = make_png(tmp_path)
    missing = tmp_path / "runs" / "sft" / "fnal"
    names = {"{missing}": missing, "{png}": png, "{out}": tmp_path / "out"}
    args = [str(names.get(a, a)) for a in command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"no such checkpoint folder: {missing}" in err and "Repo id" not in err

"""``python -m mmviz sweep`` and ``python -m mmviz trace``: what a batch job under a scheduler runs."""

from __future__ import annotations

import json

import pytest

import mmviz
from mmviz.__main__ import main


def test_the_sweep_command_writes_the_table_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    main(["sweep", "--model", "shapes-vlm", "--data", "shapes:4", "--stats", "image_share", "lens_rank", "--out",
          str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "4 examples" in printed and "image_share (mean per layer):" in printed
    result = mmviz.sweeps.load(out)
    assert result.ids == [f"scene-{i}" for i in range(4)]
    main(["sweep", "--model", "shapes-vlm", "--data", "shapes:6", "--stats", "image_share", "lens_rank", "--out",
          str(out)])  # fmt: skip
    assert len(mmviz.sweeps.load(out)) == 6


def test_the_sweep_command_reads_a_table_file_with_relative_image_paths(tmp_path):
    rows = mmviz.zoo.shapes.sweep_examples(2)
    lines = []
    for row in rows:
        row["image"].save(tmp_path / f"{row['id']}.png")
        lines.append(json.dumps({"id": row["id"], "image": f"{row['id']}.png", "prompt": row["prompt"]}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    main(["sweep", "--model", "shapes-vlm", "--data", str(tmp_path / "data.jsonl"), "--out", str(tmp_path / "o")])
    result = mmviz.sweeps.load(tmp_path / "o")
    assert result.ids == ["scene-0", "scene-1"] and not result.failed


def test_the_trace_command_writes_the_page_and_the_trace_file(tmp_path, capsys):
    image = tmp_path / "scene.png"
    mmviz.zoo.shapes.scene(3).image.save(image)
    main(["trace", "--model", "shapes-vlm", "--image", str(image), "--prompt", "What color is the square?",
          "--html", str(tmp_path / "page.html"), "--save", str(tmp_path / "scene.mmviz")])  # fmt: skip
    assert "answer:" in capsys.readouterr().out
    assert "mmviz-payload" in (tmp_path / "page.html").read_text()
    assert "What color is the square?" in mmviz.load(tmp_path / "scene.mmviz").prompt


def test_bad_input_exits_with_its_message_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["trace", "--model", str(tmp_path), "--image", "x.png", "--prompt", "What?"])
    assert stop.value.code == 2
    assert "neither a zoo model" in capsys.readouterr().err

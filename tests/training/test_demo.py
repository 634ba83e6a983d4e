import json

from restr_fast.cli import main
from restr_fast.kernels import op_registry


def test_demo_writes_metrics_and_figures(tmp_path, capsys, monkeypatch):
    # as on a user's CPU, without Triton's interpreter: the fast path's PyTorch form
    monkeypatch.setattr(op_registry, "INTERPRETED", False)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "3", "--images", "40", "--device", "cpu"]) == 0
    for name in ("metrics.md", "metrics.json", "loss.png", "predictions.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "metrics.json").read_text())
    assert set(results) == {"sentences", "every sentence = 'object'"}
    assert all(0.0 <= r["overall_iou"] <= 1.0 for r in results.values())
    printed = capsys.readouterr().out
    assert "overall IoU" in printed and "with every sentence replaced by 'object'" in printed
    assert main(["demo", "--out", str(out), "--steps", "3", "--images", "40", "--device", "cpu"]) == 2
    assert "already holds data, run, metrics.md" in capsys.readouterr().err


def test_demo_never_overwrites_files_of_its_names(tmp_path, capsys):
    notes = tmp_path / "metrics.md"
    notes.write_text("mine")
    assert main(["demo", "--out", str(tmp_path), "--steps", "1", "--images", "10", "--device", "cpu"]) == 2
    assert f"{tmp_path} already holds metrics.md: choose another --out" in capsys.readouterr().err
    assert notes.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["metrics.md"]

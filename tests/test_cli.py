import subprocess
import sys
from pathlib import Path

import pytest

from restr_fast import cli
from restr_fast.cli import main


def test_forward_prints_parts_and_shapes(capsys):
    assert main(["forward", "--config", "restr-tiny", "--text", "the small green square", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "restr-tiny" in out and "fusion" in out and "GMACs" in out
    assert "pixel_logits (2, 1, 64, 64), patch_logits (2, 1, 8, 8)" in out
    assert "['the', 'small', 'green', 'square']" in out


def test_bad_arguments_give_one_line_errors(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a bug would write never-written/
    assert main(["forward", "--text", "..."]) == 2
    assert "error: text '...' has no words" in capsys.readouterr().err
    for flag in ("--image-size", "--img-size"):  # (train's spelling too)
        assert main(["forward", flag, "100"]) == 2
        assert "not a multiple of patch_size" in capsys.readouterr().err
    assert main(["forward", "--text", " ".join(["word"] * 25)]) == 0  # warnings print as one line too
    error = capsys.readouterr().err
    assert error.startswith("restr-fast forward: warning: sentence of 25 words truncated") and error.count("\n") == 1
    assert main(["train", "--config", "refcocoo", "--data-root", "never-written", "--out", "never-written"]) == 2
    assert "a run config (refcoco, refcoco+," in capsys.readouterr().err  # the names it takes
    assert main(["forward", "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    for command in (["forward"], ["doctor"], ["demo", "--out", "never-written"]):
        assert main(command + ["--device", "foo"]) == 2
        error = capsys.readouterr().err
        assert "error: unknown device 'foo': use auto, cpu, cuda or cuda:N" in error and error.count("\n") == 1
    for command in (["forward"], ["demo", "--out", "never-written"]):
        for device in ("mps", "meta", "xpu"):  # names torch parses, but devices restr_fast does not run on
            assert main(command + ["--device", device]) == 2
            assert f"error: device '{device}' is not supported: use auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert not Path("never-written").exists()
    assert main(["synth", "--out", "never-written", "--images", "9"]) == 2
    assert "images must be >= 10" in capsys.readouterr().err and not Path("never-written").exists()


def test_an_output_path_that_is_a_file_gives_a_one_line_error(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("kept")
    for command in (["synth", "--out", str(a_file), "--images", "10"], ["demo", "--out", str(a_file)],
                    ["train", "--config", "synthetic", "--data-root", str(tmp_path), "--out", str(a_file)]):
        assert main(command) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"restr-fast {command[0]}: error: ") and error.count("\n") == 1, error
        assert str(a_file) in error
    assert a_file.read_text() == "kept"


def test_synth_writes_a_set_once(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--images", "10"]) == 0
    assert "val         1 images" in capsys.readouterr().out
    written = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert tmp_path / "synthetic" / "refs(unc).p" in written and len(written) == 12  # 10 images, refs, instances
    assert main(["synth", "--out", str(tmp_path), "--images", "20", "--seed", "1"]) == 2
    assert "already holds a synthetic set 'synthetic'" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == written


def test_synth_of_a_refer_dataset_name_writes_its_images_where_the_reader_looks(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--images", "10", "--name", "refcoco"]) == 0
    images = tmp_path / "images" / "mscoco" / "images" / "train2014"
    assert f"and {images}" in capsys.readouterr().out
    from restr_fast.data import ReferDataset
    from restr_fast.text import Vocabulary
    dataset = ReferDataset(tmp_path, "refcoco", "unc", "val", Vocabulary(["red"]), 32)  # finds every image
    assert dataset[0]["image"].shape == (3, 32, 32)


@pytest.mark.parametrize("existing, message", [
    ("refcoco/instances.json", "{root} already holds a dataset 'refcoco' ({root}/refcoco is not empty)"),
    ("images/mscoco/images/train2014/COCO_train2014_000000000009.jpg",
     "{root}/images/mscoco/images/train2014 already holds another dataset's images (COCO_train2014_000000000009.jpg)"),
    ("images/mscoco/images/train2014/refcoco_000001.png", "already holds refcoco's (left by an interrupted synth?) images"),
])
def test_synth_refuses_to_write_over_or_into_a_dataset(tmp_path, capsys, existing, message):
    (tmp_path / existing).parent.mkdir(parents=True)
    (tmp_path / existing).write_text("real")
    assert main(["synth", "--out", str(tmp_path), "--images", "10", "--name", "refcoco"]) == 2
    assert message.format(root=tmp_path) in capsys.readouterr().err
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == [tmp_path / existing]


@pytest.mark.parametrize("name", ["", "..", "../outside", "a/b"])
def test_synth_refuses_a_name_that_is_not_a_folder_name(tmp_path, capsys, name):
    root = tmp_path / "root"
    assert main(["synth", "--out", str(root), "--images", "10", "--name", name]) == 2
    assert f"the dataset name {name!r} is not a folder name" in capsys.readouterr().err
    assert not any(tmp_path.rglob("*"))  # nothing written, inside the root or beside it


def test_an_error_raised_in_a_dataloader_worker_is_one_line(monkeypatch, capsys):
    """torch raises a worker's error again with the worker's traceback in its message."""
    import restr_fast.cli as cli
    from torch._utils import ExceptionWrapper

    def fails_in_a_worker(args):
        try:
            raise ValueError("annotation 7: mask of size (3, 4) for an image of size (5, 6)")
        except ValueError:
            ExceptionWrapper(where="in DataLoader worker process 0").reraise()

    monkeypatch.setattr(cli, "_forward", fails_in_a_worker)
    assert main(["forward"]) == 2
    assert capsys.readouterr().err == ("restr-fast forward: error: annotation 7: mask of size (3, 4) for an image of "
                                       "size (5, 6)\n")


def test_synth_refuses_an_image_folder_that_is_a_file(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "synthetic").write_text("kept")
    assert main(["synth", "--out", str(tmp_path), "--images", "10"]) == 2
    assert f"{tmp_path / 'images' / 'synthetic'} is a file, where the images of 'synthetic' go" in capsys.readouterr().err
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == [tmp_path / "images" / "synthetic"]


def test_synth_writes_refer_names_sharing_an_image_folder_side_by_side(tmp_path):
    for name in ("refcoco", "refcoco+", "refcocog"):  # all three read COCO's image folder
        assert main(["synth", "--out", str(tmp_path), "--images", "10", "--name", name]) == 0
    assert len(list((tmp_path / "images" / "mscoco" / "images" / "train2014").iterdir())) == 30


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "restr-fast"
    result = subprocess.run([str(script), "forward", "--help"], capture_output=True, text=True, check=True)
    assert "--config" in result.stdout
    assert "console_main" in script.read_text()  # Ctrl-C without a traceback


@pytest.mark.parametrize("command, message", [
    ("train", "restr-fast: interrupted; the same command with --resume continues the run from its latest checkpoint\n"),
    ("demo", "restr-fast: interrupted\n")])
def test_ctrl_c_is_one_line_and_exit_status_130(command, message, monkeypatch, capsys):
    def interrupted(argv=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "main", interrupted)
    monkeypatch.setattr(sys, "argv", ["restr-fast", command, "--out", "somewhere"])
    assert cli.console_main() == 130
    assert capsys.readouterr().err == message

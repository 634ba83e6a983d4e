"""The tuning tools' shared part (``benchmarks/tuning.py``): alternatives applied one at a time and
restored, failures reported, the table ordered by speed-up over the defaults."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not an installed package
from benchmarks.tuning import print_fastest_first, replaced, time_variants  # noqa: E402


def test_replacements_hold_inside_the_block_and_are_undone_after_an_error():
    module = SimpleNamespace(tile=16, warps=4)
    with pytest.raises(RuntimeError):
        with replaced([(module, "tile", 32), (module, "warps", 8)]):
            assert (module.tile, module.warps) == (32, 8)
            raise RuntimeError("a kernel failed")
    assert (module.tile, module.warps) == (16, 4)


def test_each_variant_is_timed_alone_and_a_failing_one_is_named(capsys):
    module = SimpleNamespace(tile=16)

    def measure():
        if module.tile == 0:
            raise ValueError("too many registers")
        return {"small": module.tile / 16, "large": module.tile / 8}
    results = time_variants([("tile 32", [(module, "tile", 32)]), ("tile 0", [(module, "tile", 0)]),
                             ("tile 8", [(module, "tile", 8)])], measure)
    assert results[0] == ("defaults", {"small": 1.0, "large": 2.0})
    assert results[1] == ("tile 32", {"small": 2.0, "large": 4.0})
    assert results[2][0] == "tile 0: ValueError: too many registers" and results[2][1]["small"] == float("inf")
    assert results[3][0] == "tile 8" and results[4] == ("defaults, measured again last", results[0][1])
    assert module.tile == 16
    progress = capsys.readouterr().out.splitlines()
    assert progress[0] == "defaults: {'small': 1.0, 'large': 2.0}" and len(progress) == 5
    assert progress[2].startswith("tile 0: ValueError: too many registers: ")

    print_fastest_first("title", results)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["title", "| variant | small | large | vs defaults |", "| --- | --- | --- | --- |"]
    assert [line.split(" | ")[0] for line in lines[3:]] == [
        "| tile 8", "| defaults", "| defaults, measured again last", "| tile 32",
        "| tile 0: ValueError: too many registers"]
    assert lines[3].endswith("| 2.00x |") and lines[5].endswith("| 1.00x |") and lines[6].endswith("| 0.50x |")
    assert lines[7].endswith("| 0.00x |")

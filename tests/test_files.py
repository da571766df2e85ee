"""Atomic result files: a failed write leaves the earlier file whole and no temporary behind."""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fpjax import files  # noqa: E402


def test_a_write_that_fails_midway_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "result.npz"
    np.savez_compressed(path, m=np.arange(5))
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="killed"):
        with files.atomic(path) as (temporary,):
            np.savez_compressed(temporary, m=np.arange(10**5))
            assert temporary.suffix == ".npz" and temporary.exists()
            raise RuntimeError("killed midway")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.npz"]


def test_json_text_and_figures_land_whole(tmp_path):
    files.write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    with pytest.raises(TypeError):
        files.write_json(tmp_path / "a.json", {"x": object()})  # cannot be JSON: nothing written
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    figure = plt.figure()
    files.save_figure(figure, tmp_path / "f.png", dpi=50)
    plt.close(figure)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "f.png"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_names_the_final_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    path.write_text("{}")

    def full(self, text, *args, **kwargs):
        with open("/dev/full", "w") as handle:
            handle.write(text)
            handle.flush()

    monkeypatch.setattr(type(path), "write_text", full)
    with pytest.raises(OSError) as error:
        files.write_text(path, "x" * 10**5)
    assert error.value.filename == str(path)
    monkeypatch.undo()
    assert path.read_text() == "{}"

"""``fpjax bench scale``'s measurements, checked against what is known (the bench itself is run by hand)."""

import pathlib
import subprocess
import sys

import pytest

from fpjax.bench import scale

_PEAKS = """
import numpy as np
from fpjax.bench import scale
before = scale.peak_resident_mb()
block = np.ones(300 * 2**20 // 8)  # 300 MB, touched
print(before, scale.peak_resident_mb(), block.sum() == block.size)
"""


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(), reason="reads /proc/self/status")
def test_peak_memory_sees_an_allocation_of_known_size():
    # A fresh process: a test worker's earlier peak could hide the allocation.
    out = subprocess.run([sys.executable, "-c", _PEAKS], capture_output=True, text=True, check=True).stdout.split()
    before, after = float(out[0]), float(out[1])
    assert 290 < after - before < 330 and out[2] == "True"


def test_the_disk_rate_writes_and_removes_its_file(tmp_path):
    assert scale.disk_write_rate(tmp_path, 16) > 0 and not list(tmp_path.iterdir())


def test_the_table_and_the_figure_show_every_run():
    training = [dict(source=s, images=n, steps=5, peak_rss_mb=1000.0 + n / 10, steps_per_second=4.0)
                for s in scale.SOURCES for n in (16, 1010)]  # fmt: skip
    precompute = [dict(scheme="spectral", images=16, images_per_second=90.0, mb_per_second=40.0,
                       bytes_per_image_raw=414e3, bytes_per_image_disk=310e3, seconds=0.18, solve_seconds=0.06,
                       check_seconds=0.01)]  # fmt: skip
    result = dict(training=training, precompute=precompute, disk_write_mb_per_second=400.0)
    table = scale.markdown(result)
    assert (
        table.count("| on_the_fly |") == 2
        and "| spectral | 16 | 90.0 | 40.0 | 0.414 | 0.310 | 0.1 of 0.2 | 0.01 |" in table
    )
    lines = scale.plot_memory(result).axes[0].get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[16, 1010]] * 3

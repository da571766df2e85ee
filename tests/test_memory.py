"""Memory estimates: the arithmetic against hand counts, and refusals against the machine's own figures."""

import numpy as np
import pytest

from fpjax import memory


def test_trajectory_bytes_is_the_count_of_floats():
    assert memory.trajectory_bytes(100, (32, 32)) == 101 * 32 * 32 * 4
    assert memory.trajectory_bytes(10, (8, 9), fields=3, dtype=np.float64) == 3 * 11 * 8 * 9 * 8


def test_available_memory_agrees_with_proc_meminfo():
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    reported = int(fields["MemAvailable"].split()[0]) * 1024
    assert abs(memory.available_host_bytes() - reported) < 0.25 * reported  # read moments apart
    assert memory.available_device_bytes() > 0


def test_a_request_beyond_the_available_memory_is_refused_in_one_line():
    too_much = int(memory.available_host_bytes() * 2)
    with pytest.raises(memory.InsufficientMemoryError, match=r"a test needs .* more than the .* available: smaller"):
        memory.require(too_much, "a test", "smaller", device=False)
    memory.require(1024, "a test", "smaller", device=False)
    assert memory.describe_bytes(65.5e9) == "65.5 GB" and memory.describe_bytes(512) == "512 bytes"

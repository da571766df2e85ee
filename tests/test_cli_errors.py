"""Every error a user can cause is one or two lines on stderr naming the thing and the fix, with no traceback.

Most cases run through the console script (a subprocess each: it imports JAX, a few seconds); the option checks,
simulated read-only and full disks, and the line between a user's error and a bug are also checked in-process.
"""

import errno
import os
import pathlib
import pickle
import shlex
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest

from fpjax import cli, devices
from fpjax.cli import main
from fpjax.data import sample_images
from fpjax.learn.trainer import TrainConfig
from fpjax.solver.problem import FPConfig

_SCRIPT = pathlib.Path(sys.executable).with_name("fpjax")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "fpjax.cli"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONWARNINGS": "ignore"}


def fpjax(argv, cwd):
    """Run the console script; a generous timeout only so that a hang fails instead of blocking the suite."""
    return subprocess.run(COMMAND + list(argv), capture_output=True, text=True, cwd=cwd, env=ENV, timeout=900)


def assert_one_line_error(stderr: str, *words: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert 1 <= len(lines) <= 2, stderr
    assert lines[0].startswith("fpjax ") and ": error: " in lines[0], stderr
    for word in words:
        assert word in stderr, (word, stderr)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Broken inputs of every kind, in one folder."""
    root = tmp_path_factory.mktemp("inputs")
    jpegs = root / "jpegs"
    jpegs.mkdir()
    mpimg.imsave(jpegs / "good.png", sample_images(32)[0])
    mpimg.imsave(jpegs / "bad.jpg", sample_images(32)[1])
    (jpegs / "bad.jpg").write_bytes((jpegs / "bad.jpg").read_bytes()[:300])  # truncated
    (root / "notes.npz").write_text("not an archive\n")
    np.savez(root / "other.npz", x=np.zeros(3))
    trucks = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.savez(root / "trucks.npz", images=trucks, labels=np.full(4, 9))
    batches = root / "cifar-10-batches-py"
    batches.mkdir()
    with open(batches / "test_batch", "wb") as f:
        pickle.dump({b"something": 1}, f)
    crafted = root / "crafted" / "cifar-10-batches-py"
    crafted.mkdir(parents=True)
    with open(crafted / "test_batch", "wb") as f:  # unpickling it with pickle.load would create the file
        pickle.dump({b"data": _CreatesAFile(str(root / "created-by-the-pickle"))}, f)
    (root / "afile").write_text("a file, not a folder\n")
    return root


class _CreatesAFile:
    """Pickles as a call of ``open(path, "w")``: loading it with ``pickle.load`` creates ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


# (arguments, exit status, words the message must contain); {d} is the inputs folder. Inputs, through the console
# script where a user meets them; an option's value is a parse-time check, tested in-process below
# (test_option_values_are_checked_where_they_are_parsed), one console-script case kept for the exit status.
CASES = {
    "n-zero": ("precompute --n 0", 2, ["--n", "positive integer, got 0"]),
    "missing-folder": ("precompute --images {d}/nowhere", 1, ["nowhere", "does not exist"]),
    "corrupt-jpeg": ("precompute --images {d}/jpegs --T 3", 1, ["bad.jpg", "cannot read image"]),
    "text-as-npz": ("precompute --data cifar10:{d}/notes.npz", 1, ["notes.npz", "not a CIFAR-10 npz"]),
    "npz-other-arrays": ("precompute --data cifar10:{d}/other.npz", 1, ["other.npz", "'images'", "'labels'"]),
    "bad-cifar-batch": ("precompute --data cifar10:{d}/cifar-10-batches-py", 1, ["test_batch", "CIFAR-10 batch"]),
    "crafted-pickle": (
        "precompute --data cifar10:{d}/crafted/cifar-10-batches-py",
        1,
        ["test_batch", "io.open", "never holds"],
    ),
    "empty-class": ("precompute --data cifar10:{d}/trucks.npz:cat", 1, ["trucks.npz", "no image of class cat"]),
    "missing-cifar": ("precompute --data cifar10:{d}/nothing.npz", 1, ["nothing.npz", "does not exist"]),
    "out-is-a-file": ("precompute --out {d}/afile", 1, ["afile", "folder"]),
    "store-is-a-file": ("precompute --store {d}/afile", 1, ["afile", "--store"]),
    "store-under-a-file": ("precompute --n 1 --store {d}/afile/s.zarr", 1, ["afile/s.zarr", "Not a directory"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_console_script_reports_a_user_error_in_one_line(case, inputs, tmp_path):
    argv, status, words = CASES[case]
    result = fpjax(shlex.split(argv.format(d=inputs)), cwd=tmp_path)
    assert result.returncode == status, result.stderr
    assert_one_line_error(result.stderr, *words)
    assert not (inputs / "created-by-the-pickle").exists(), "a crafted CIFAR-10 batch ran its code"


def test_console_script_reports_a_full_disk_and_keeps_the_earlier_results(tmp_path):
    """On a full disk the npz and both figures are written together or not at all: the earlier run's stay whole."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a small tmpfs")
    try:
        out = disk / "out"
        earlier = fpjax(["precompute", "--n", "1", "--T", "2", "--out", str(out)], cwd=tmp_path)
        assert earlier.returncode == 0, earlier.stderr
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        result = fpjax(["precompute", "--n", "4", "--T", "8", "--out", str(out)], cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert_one_line_error(result.stderr, "No space left on device", "fp_solutions.npz", "free some disk space")
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_console_script_names_the_settings_that_differ_from_a_store(tmp_path, capsys):
    store = tmp_path / "fp.zarr"
    argv = ["precompute", "--n", "1", "--T", "3", "--store", str(store)]
    assert main(argv) == 0
    capsys.readouterr()
    result = fpjax(argv + ["--scheme", "density"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, "scheme", str(store))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_console_script_reports_a_read_only_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = fpjax(["precompute", "--n", "1", "--T", "3", "--out", str(locked / "out")], cwd=tmp_path)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, str(locked / "out"), "write elsewhere")


def test_debug_shows_the_traceback(tmp_path):
    result = fpjax(["--debug", "precompute", "--images", str(tmp_path / "nowhere")], cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "FileNotFoundError: image folder" in result.stderr
    with pytest.raises(FileNotFoundError, match="nowhere"):  # after the subcommand, too
        main(["precompute", "--images", str(tmp_path / "nowhere"), "--debug"])


# ----------------------------------------------------------------------------------------------
# In-process: the same main(), without a subprocess per case


@pytest.mark.parametrize(
    "argv, words",
    [
        (["precompute", "--T", "0"], ["--T", "positive"]),
        (["precompute", "--T", "2.5"], ["--T", "expected a positive integer"]),
        (["precompute", "--size", "-4"], ["--size"]),
        (["precompute", "--g", "inf"], ["--g", "finite"]),
        (["precompute", "--g", "-0.5"], ["--g", "FPConfig.g must be >= 0"]),
        (["precompute", "--tol", "0"], ["--tol"]),
        (["precompute", "--maxiter", "0"], ["--maxiter"]),
        (["precompute", "--dim", "0"], ["--dim"]),
        (["precompute", "--solver", "magic"], ["--solver", "invalid choice"]),
        (["run", "--learning-rate", "-1"], ["--learning-rate", "positive"]),
        (["run", "--max-steps", "0"], ["--max-steps"]),
        (["run", "--sampler-steps", "0"], ["--sampler-steps"]),
        (["run", "--dropout", "nan"], ["--dropout", "finite"]),
        (["run", "--n", "0"], ["--n"]),
        (["precompute", "--n", "-1"], ["--n", "got -1"]),
        (["precompute", "--n", "2", "--batch-size", "0"], ["--batch-size", "positive"]),
        (["precompute", "--g", "nan"], ["--g", "finite"]),
        (["run", "--n", "1", "--replay", "1.5"], ["TrainConfig", "replay", "fpjax run --help"]),
        (["run", "--target-ssim", "2"], ["target_ssim", "(-1, 1]"]),
        (["precompute", "--images", "x", "--data", "samples"], ["--images", "--data", "give one"]),
        (["precompute", "--scheme", "spectral", "--tol", "1e-3"], ["--tol", "log_density or density", "spectral"]),
        (["precompute", "--scheme", "density", "--predictor", "previous"], ["--predictor", "log_density"]),
    ],
)
def test_option_values_are_checked_where_they_are_parsed(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert_one_line_error(capsys.readouterr().err, *words)


def test_a_multi_process_run_missing_a_setting_is_one_line(monkeypatch, capsys):
    for name in devices.COORDINATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["precompute", "--n", "1", "--T", "2", "--coordinator", "localhost:1234"])
    assert exit_.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "--num-processes", "--process-id")


def test_more_images_than_there_are_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["precompute", "--n", "1000", "--T", "2"])
    assert exit_.value.code == 1
    assert_one_line_error(capsys.readouterr().err, "samples has 16 images, fewer than the 1000 asked for")


def test_values_the_library_accepts_the_command_line_accepts():
    """g = 0 (no diffusion) and outer_tol = 0 (run max_outer iterations) mean what FPConfig says they mean."""
    args = cli.build_parser().parse_args(["precompute", "--g", "0", "--outer-tol", "0"])
    config = cli.dataclass_from_args(FPConfig, args)
    assert config.g == 0.0 and config.scheme.outer_tol == 0.0
    args = cli.build_parser().parse_args(["run", "--target-ssim", "none"])
    assert cli.dataclass_from_args(TrainConfig, args, defaults=None).target_ssim is None


def test_none_and_valid_values_still_parse():
    args = cli.build_parser().parse_args(["precompute", "--maxiter", "none", "--g", "1e-3", "--T", "7", "--n", "2"])
    assert args.maxiter is None and args.g == 1e-3 and args.T == 7 and args.n == 2 and args.debug is False
    args = cli.build_parser().parse_args(["run", "--grad-clip", "none", "--sampler-t-end", "0", "--debug"])
    assert args.grad_clip is None and args.sampler_t_end == 0.0 and args.debug is True


def test_a_read_only_file_system_is_one_line(tmp_path, monkeypatch, capsys):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    with pytest.raises(SystemExit) as exit_:
        main(["precompute", "--n", "1", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 1
    assert_one_line_error(capsys.readouterr().err, "Read-only file system", str(tmp_path / "out"), "write elsewhere")


def test_a_bug_still_shows_its_traceback(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(cli.commands, "open_dataset", broken)
    with pytest.raises(KeyError):
        main(["precompute", "--n", "1", "--out", str(tmp_path)])


def test_an_interruption_says_how_to_resume(monkeypatch, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.commands, "open_dataset", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(["precompute", "--n", "1", "--out", str(tmp_path)])
    assert exit_info.value.code == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", "precompute", "--n", "1", "--out", str(tmp_path)])


def _raise(error):
    raise error


def _numpy_value_error():
    np.zeros(0).min()


@pytest.mark.parametrize(
    "make, status, words",
    [
        (lambda: _raise(cli.ConfigError("FPConfig: T must be positive")), 2, ["FPConfig: T", "--help"]),
        (lambda: _raise(ValueError("the store at s.zarr\nwas written with other settings")), 1, ["s.zarr was"]),
        (_numpy_value_error, 1, ["zero-size array", "raised inside numpy", "--debug"]),
        (lambda: _raise(OSError(errno.ENOSPC, "No space left on device", "fp.zarr/m/c/0")), 1, ["fp.zarr/m/c/0"]),
        (lambda: _raise(PermissionError(errno.EACCES, "Permission denied", "x.png")), 1, ["x.png", "permissions"]),
        (lambda: _raise(FileNotFoundError("image folder x does not exist")), 1, ["image folder x"]),
        (lambda: _raise(TimeoutError("no process created the store")), 1, ["no process"]),
        (lambda: _raise(FloatingPointError("training loss is nan; lower the learning rate")), 1, ["learning rate"]),
        (lambda: _raise(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 8 GiB\nmore")), 1, ["--batch-size"]),
        (lambda: _raise(devices.PeerLostError("process 0 of 2 waited at 'store created'")), 1, ["store created"]),
        (lambda: _raise(ValueError("Gloo AllGather failed: Connection reset by peer")), 1, ["another process"]),
        (lambda: _raise(KeyError("images")), None, []),
        (lambda: _raise(OSError(errno.EIO, "Input/output error")), None, []),
    ],
)
def test_explain_tells_a_users_error_from_a_bug(make, status, words):
    try:
        make()
    except Exception as error:  # the point: explain() sorts them
        report = cli.explain(error, "precompute")
    if status is None:
        assert report is None
        return
    code, message, hint = report
    assert code == status and "\n" not in message
    for word in words:
        assert word in message + " " + (hint or "")


def test_a_large_image_without_size_is_refused_before_it_is_decoded(tmp_path, monkeypatch, capsys):
    """A 3000x3000 JPEG without --size grew to 20.8 GB and was killed: now its header is read, not its pixels."""
    import PIL.Image

    from fpjax import data
    from fpjax import memory as fpjax_memory

    folder = tmp_path / "big"
    folder.mkdir()
    PIL.Image.new("RGB", (3000, 3000), (120, 60, 30)).save(folder / "big.jpg")

    def no_decoding(path):
        raise AssertionError(f"{path} was decoded")

    monkeypatch.setattr(data, "read_image", no_decoding)
    for name in ("available_host_bytes", "available_device_bytes"):  # the same on a machine of any size
        monkeypatch.setattr(fpjax_memory, name, lambda *args: 16 * 2**30)
    with pytest.raises(SystemExit) as exit_:
        main(["precompute", "--images", str(folder), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 1
    assert_one_line_error(capsys.readouterr().err, "3000x3000 with T=100 needs", "--size 64")

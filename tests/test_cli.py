import argparse
import dataclasses
import functools
import inspect
import json
import time

import matplotlib.image as mpimg
import numpy as np
import pytest

import fpjax
from fpjax import cli, pipeline
from fpjax.cli import main
from fpjax.data import sample_images
from fpjax.experiments.common import QUICK, load_images
from fpjax.learn import trainer as training
from fpjax.learn.models.unet import UNetConfig
from fpjax.learn.trainer import TrainConfig
from fpjax.solver import linsolve, problem, stencil


def test_precompute_writes_solutions_scores_and_figures(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["precompute", "--n", "2", "--T", "5", "--size", "32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "astronaut_r0_c64" in printed and "converged 5/5" in printed
    data = np.load(out / "fp_solutions.npz")
    m, score = data["m"], data["score"]  # the layout of fpjax.precompute and the store: (N, T+1, H, W, K)
    assert m.shape == (2, 6, 32, 32, 1) and score.shape == (2, 6, 32, 32, 1, 2)
    padded = np.pad(m[..., 0], [(0, 0)] * 2 + [(1, 1), (1, 1)])  # zero boundary, pixel units (eq. 25)
    np.testing.assert_allclose(score[..., 0, 0], (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2, atol=1e-6)
    np.testing.assert_allclose(score[..., 0, 1], (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2, atol=1e-6)
    m0 = fpjax.initial_log_density(sample_images(32)[1])
    np.testing.assert_allclose(m[1, 0, ..., 0], np.asarray(m0), rtol=1e-6)
    assert data["converged"].all() and list(data["names"]) == ["astronaut_r0_c64", "astronaut_r64_c96"]
    for figure in ("precompute.png", "convergence.png"):
        assert mpimg.imread(out / figure).shape[0] > 100


def test_precompute_reads_an_image_folder_per_channel(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(sample_images(32)[:2, :16, :20]):
        mpimg.imsave(folder / f"{i}.png", image)
    out = tmp_path / "run"
    args = ["precompute", "--images", str(folder), "--T", "3", "--density", "intensity", "--per-channel"]
    assert main(args + ["--out", str(out)]) == 0
    data = np.load(out / "fp_solutions.npz")
    assert data["m"].shape == (2, 4, 16, 20, 3) and data["score"].shape == (2, 4, 16, 20, 3, 2)
    assert not bool(data["channels_shared"])
    padded = np.pad(data["m"], [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)])  # each channel's own field, zero boundary
    np.testing.assert_allclose(data["score"][..., 0], (padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]) / 2, atol=1e-6)
    np.testing.assert_allclose(data["score"][..., 1], (padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]) / 2, atol=1e-6)


def test_precompute_to_store_resumes(tmp_path, capsys):
    store = tmp_path / "fp.zarr"
    args = [
        "precompute",
        "--n",
        "3",
        "--T",
        "4",
        "--size",
        "32",
        "--store",
        str(store),
        "--batch-size",
        "2",
        "--projection",
        "initial_guess",
        "--cycle",
        "3",
        "--dim",
        "4",
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "| 3 | 0 |" in first and "3/3 |" in first
    assert main(args) == 0
    assert "| 3 | 3 |" in capsys.readouterr().out  # everything found finished
    import zarr

    group = zarr.open_group(str(store))
    assert group["m"].shape == (3, 5, 32, 32, 1) and np.asarray(group["done"][:]).all()


def _timed(monkeypatch, owner, name, spans):
    """Replace ``owner.name`` by a wrapper that appends ``(start, end)`` of each call, by the test's own clock."""
    inner = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spans.append((start, time.perf_counter()))

    monkeypatch.setattr(owner, name, timed)


def test_run_is_the_whole_pipeline_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = [
        "run",
        "--n",
        "2",
        "--T",
        "10",
        "--channels",
        "8",
        "--max-steps",
        "10",
        "--steps-per-call",
        "5",
        "--sampler-steps",
        "5",
        "--generate",
        "2",
        "--out",
        str(out),
    ]
    solves, trainings = [], []  # the stages' spans measured from outside the code that reports them
    _timed(monkeypatch, pipeline, "precompute", solves)
    _timed(monkeypatch, training, "train", trainings)
    start = time.perf_counter()
    assert main(argv) == 0
    elapsed = time.perf_counter() - start
    for name in (
        "denoising.png",
        "ssim_vs_time.png",
        "metrics.json",
        "training_log.json",
        "checkpoint",
        "fp_store.zarr",
    ):
        assert (out / name).exists(), name
    report = json.loads((out / "metrics.json").read_text())
    assert report["images"] == 2 and len(report["per_image"]) == 2
    assert all(p["steps"] in (5, 10) for p in report["per_image"])
    assert report["settings"]["unet"]["num_images"] == 2 and report["generated"]["count"] == 2
    log = json.loads((out / "training_log.json").read_text())["log"]
    ((solve_start, solve_end),), ((train_start, train_end),) = solves, trainings
    # The reported pre-computation is the solve (at least) and its embedding, all before training began.
    assert solve_end - solve_start <= report["precompute_seconds"] <= train_start - solve_start
    # Training time runs inside the train call and grows; the wall time covers both stages and fits in the command.
    train_seconds = [r["train_seconds"] for r in log]
    assert 0 < train_seconds[0] and train_seconds == sorted(train_seconds)
    assert train_seconds[-1] <= train_end - train_start
    for r in log:
        assert solve_end - solve_start + r["train_seconds"] <= r["wall_seconds"] <= train_end - solve_start
    assert report["wall_seconds"] <= elapsed and report["train_seconds"] <= train_end - train_start
    printed = capsys.readouterr().out
    assert str(out / "denoising.png") in printed
    # Running again with the newest checkpoint damaged: it is named, the older intact one restored, and the steps
    # after it trained again to the same log as the uninterrupted run (the resume is exact).
    newest = max((p for p in (out / "checkpoint").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    data = max((p for p in (newest / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match=rf"checkpoint {newest.name}: its state cannot be read.*resuming from"):
        assert main(argv) == 0
    again = json.loads((out / "training_log.json").read_text())["log"]
    assert [r["global_step"] for r in again] == [r["global_step"] for r in log]
    assert [r["ssim"] for r in again] == pytest.approx([r["ssim"] for r in log], abs=1e-6)


def test_experiment_all_quick_writes_a_report(tmp_path):
    out = tmp_path / "exp"
    start = time.perf_counter()
    assert main(["experiment", "all", "--quick", "--budget", "3", "--max-seconds", "3", "--out", str(out)]) == 0
    elapsed = time.perf_counter() - start
    report = (out / "report.md").read_text()
    for heading in ("## exp1", "## exp2", "## exp3"):
        assert heading in report
    for name in ("exp1.json", "exp2.json", "exp3.json", "exp1_ssim_vs_time.png", "exp3_generated.png"):
        assert (out / name).exists(), name
    exp1 = json.loads((out / "exp1.json").read_text())
    assert {r["method"] for r in exp1["rows"]} == {"fpjax", "DDPM"}
    assert all(0 < row["seconds"] <= elapsed for row in exp1["rows"])  # times measured inside the command
    exp3 = json.loads((out / "exp3.json").read_text())
    assert exp3["fpjax"]["precompute_seconds"] > 0 and len(exp3["DDPM"]["nearest_ssim"]) == 2
    # The generation metric recomputed from the written images with scikit-image, not fpjax's dm-pix SSIM.
    training_images, source = load_images(QUICK, exp3["size"], QUICK.exp3_images)
    assert source == exp3["source"]
    for method in ("fpjax", "DDPM"):
        generated = np.load(out / f"exp3_generated_{method}.npy")
        table = np.array([[_skimage_ssim(g, t) for t in training_images] for g in generated])
        np.testing.assert_allclose(exp3[method]["nearest_ssim"], table.max(axis=1), atol=1e-4, err_msg=method)
        best = table[np.arange(len(table)), exp3[method]["nearest_index"]]
        np.testing.assert_allclose(best, table.max(axis=1), atol=1e-4, err_msg=method)  # the index names the best


def _skimage_ssim(a, b):
    """The SSIM fpjax.eval.metrics documents (Gaussian window sigma 1.5, data range 1), from scikit-image."""
    from skimage.metrics import structural_similarity

    return structural_similarity(
        np.asarray(a, np.float64), np.asarray(b, np.float64), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1.0, channel_axis=-1,
    )  # fmt: skip


def test_experiment_pds_quick_writes_a_table(tmp_path):
    out = tmp_path / "pds"
    assert main(["experiment", "pds", "--quick", "--budget", "3", "--out", str(out)]) == 0
    result = json.loads((out / "pds.json").read_text())
    assert {(r["method"], r["steps"], r["alpha"]) for r in result["rows"]} == {
        (m, s, a) for m in ("fpjax", "DDPM") for s in (5,) for a in (None, 2.0)
    }
    assert all(0.0 <= r["denoise_ssim"] <= 1.0 for r in result["rows"])
    assert set(result["summary"]) == {"fpjax", "DDPM"}
    assert set(result["summary"]["DDPM"]) == {"denoise_ssim", "generate_nearest_ssim"}
    assert (out / "pds_preconditioner_alpha2.npz").exists() and "## PDS" in (out / "report.md").read_text()


def test_precompute_spectral_scheme_to_a_store_refuses_another_scheme(tmp_path, capsys):
    import pytest
    from reference import heat_log_density

    from fpjax.batch.store import StoreMismatchError

    store = tmp_path / "fp.zarr"
    args = ["precompute", "--n", "2", "--T", "4", "--store", str(store), "--batch-size", "2"]
    assert main(args + ["--scheme", "spectral"]) == 0
    assert "2/2 |" in capsys.readouterr().out
    import zarr

    stored = np.asarray(zarr.open_group(str(store))["m"][1, ..., 0], np.float64)
    m0 = np.asarray(fpjax.initial_log_density(sample_images(32)[1].astype(np.float64)))
    expected = heat_log_density(m0, 0.5 * 0.5**2 * np.arange(5) / 4, (1 / 32, 1 / 32), "zero")
    assert np.linalg.norm(stored - expected) / np.linalg.norm(expected) < 1e-6
    with pytest.raises(SystemExit) as exit_:  # one line naming the differing setting, no traceback
        main(args + ["--scheme", "density"])
    assert exit_.value.code == 1 and "scheme" in capsys.readouterr().err
    with pytest.raises(StoreMismatchError, match="scheme"):  # --debug: the exception itself
        main(args + ["--scheme", "density", "--debug"])


def test_precompute_streams_a_synthetic_set_and_lists_only_the_first_images(tmp_path, capsys, monkeypatch):
    """``--data synthetic:N`` is read a batch at a time (never whole) into the store; its m is the heat
    equation's closed form for the synthetic images (a flipped and shifted CIFAR or sample image)."""
    from reference import heat_log_density

    from fpjax.batch.store import FPStore
    from fpjax.data import sets

    monkeypatch.setattr(cli.commands, "IMAGE_LINES", 3)
    store = tmp_path / "synthetic.zarr"
    argv = ["precompute", "--data", "synthetic:24", "--size", "16", "--T", "3", "--scheme", "spectral"]
    assert main(argv + ["--store", str(store), "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "24/24 |" in out and out.count(" s/image ") == 3 and "after 3 images only those with unconverged" in out
    stored = FPStore.read(store)
    assert stored.done().all() and stored.m.shape == (24, 4, 16, 16, 1)
    image = sets.open_dataset("synthetic:24", 16)[21]  # a CIFAR image, or (16 samples) a moved copy
    m0 = np.asarray(fpjax.initial_log_density(image))
    expected = heat_log_density(m0, 0.5 * 0.5**2 * np.arange(4) / 3, (1 / 16, 1 / 16), "zero")
    got = np.asarray(stored.read_m(np.array([21])))[0, ..., 0]
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-5


# ----------------------------------------------------------------------------------------------
# Options generated from the configuration dataclasses


def _library_value(instance, path):
    for name in path:
        instance = getattr(instance, name)
    return instance


SCHEME_CLASSES = (fpjax.LogDensity, fpjax.Density, fpjax.Spectral)


def test_every_generated_option_defaults_to_the_library_or_a_documented_override():
    parser = cli.build_parser()
    run, pre = parser.parse_args(["run"]), parser.parse_args(["precompute"])
    overrides = {name: value for name, (value, _) in pipeline.TRAIN_OVERRIDES.items()}
    library = [
        (run, fpjax.FPConfig(), {}),
        (pre, fpjax.FPConfig(), {}),
        (run, TrainConfig(), overrides),
        (run, UNetConfig(), {}),
        (run, pipeline.RunConfig(), {}),
    ]
    checked = 0
    for args, instance, override in library:
        for option in cli.dataclass_options(type(instance)):  # without overrides: the library's defaults
            if option.variants:  # a scheme's option: absent unless given, the scheme's default then
                scheme = next(c for c in SCHEME_CLASSES if c.name == option.variants[0])
                assert not hasattr(args, option.dest) and option.default == getattr(scheme(), option.path[1])
            elif option.path == ("scheme",):  # --scheme chooses by name
                assert getattr(args, option.dest) == instance.scheme.name
            else:
                expected = override.get(option.path[0], _library_value(instance, option.path))
                assert getattr(args, option.dest) == expected, f"{option.flag} drifted from {type(instance).__name__}"
            checked += 1
    signature = inspect.signature(fpjax.precompute).parameters
    for option in cli.PRECOMPUTE_OPTIONS:
        assert getattr(pre, option.dest) == signature[option.path[0]].default, f"{option.flag} drifted"
    assert checked > 40 and {"scheme", "replay", "max_steps", "sampler_steps", "sampler_method"} <= set(vars(run))
    # the same, end to end: the configurations the commands build from no options
    build = functools.partial(cli.dataclass_from_args, args=run)
    assert build(fpjax.FPConfig) == fpjax.FPConfig() and build(UNetConfig) == UNetConfig()
    assert build(TrainConfig) == pipeline.main_job_train_config() and build(pipeline.RunConfig) == pipeline.RunConfig()
    assert cli.dataclass_from_args(fpjax.FPConfig, pre) == fpjax.FPConfig()


def test_choices_come_from_the_module_tuples_and_bad_values_are_usage_errors(capsys):
    choices = {o.dest: o.choices for o in cli.dataclass_options(fpjax.FPConfig)}
    assert choices["scheme"] == problem.SCHEMES and choices["linearization"] == problem.LINEARIZATIONS
    assert choices["solver"] == linsolve.SOLVERS and choices["preconditioner"] == linsolve.PRECONDITIONERS
    assert choices["boundary"] == stencil.BOUNDARIES and choices["T"] is None
    with pytest.raises(SystemExit):
        main(["precompute", "--solver", "magic"])
    with pytest.raises(SystemExit):  # TrainConfig refuses it: a usage error naming the config, not a traceback
        main(["run", "--n", "1", "--replay", "1.5"])
    assert "TrainConfig: replay must be in [0, 1)" in capsys.readouterr().err


def test_dataclass_options_read_types_docstrings_and_nested_configs():
    @dataclasses.dataclass(frozen=True)
    class Inner:
        """Attributes:
        steps: how many, 100% of them.
        """

        steps: int = 3

    @dataclasses.dataclass(frozen=True)
    class Outer:
        """Toy settings.

        Attributes:
          rate, decay: two floats.
          clip: optional threshold (``None``: none).
          widths: per level.
          fast: a switch.
          inner: nested.
        """

        rate: float = 0.1
        decay: float = 0.9
        clip: float | None = 1.0
        widths: tuple[int, ...] = (1, 2)
        fast: bool = False
        inner: Inner = Inner()
        hook: object = None  # no command-line form: left to its default

    parser = argparse.ArgumentParser()
    options = cli.add_dataclass_options(parser, Outer)
    assert [o.flag for o in options] == ["--rate", "--decay", "--clip", "--widths", "--fast", "--inner-steps"]
    assert options[0].help == options[1].help == "two floats." and options[2].help == "optional threshold (None: none)."
    assert "100%" in parser.format_help()
    args = parser.parse_args(["--clip", "none", "--widths", "4", "8", "--fast", "--inner-steps", "7"])
    assert cli.dataclass_from_args(Outer, args) == Outer(clip=None, widths=(4, 8), fast=True, inner=Inner(7))
    assert cli.dataclass_from_args(Outer, parser.parse_args([])) == Outer()

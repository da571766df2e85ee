"""Write notebooks/04_fpjax_vs_ddpm.ipynb (outputs empty; CI executes it)."""

import nbformat as nbf
from notebook_cells import install_cell, write_notebook

cells = [
    nbf.v4.new_markdown_cell(
        "# fpjax against DDPM: the quick versions of exp1 and exp3\n\n"
        "The cross-matrix paper reports fpjax reaching a denoising SSIM 21-115x faster than DDPM (exp1) and "
        "generating better images under the same budget (exp3). Here both run on this machine, at a small "
        "scale (CPU, a few minutes): the same U-Net, Adam, batch and SSIM check for both. "
        "`fpjax experiment all --out DIR` runs the full versions. On Colab the first cell installs fpjax."
    ),
    install_cell(),
    nbf.v4.new_code_cell(
        "import dataclasses, pathlib, tempfile\n"
        "import matplotlib.pyplot as plt\n"
        "from fpjax.experiments import common, papers as experiments\n"
        "out = pathlib.Path(tempfile.mkdtemp())\n"
        "# The settings of `fpjax experiment all --quick` with 3 s budgets, small for CI; raise the targets and\n"
        "# budgets for real numbers.\n"
        "settings = dataclasses.replace(common.QUICK, max_seconds=3.0, budget=3.0,\n"
        "                               cifar='../../shared/data/cifar10_subset.npz')\n"
        "settings"
    ),
    nbf.v4.new_markdown_cell(
        "## exp1: one image, time to a target SSIM\n\n"
        "fpjax's time includes its pre-computation (FP solve and embedding)."
    ),
    nbf.v4.new_code_cell(
        "r1 = experiments.exp1(out, settings)\n"
        "print(experiments.exp1_markdown(r1))\n"
        "plt.imshow(plt.imread(out / 'exp1_ssim_vs_time.png')); plt.axis('off'); plt.show()"
    ),
    nbf.v4.new_markdown_cell(
        "## exp3: the same wall-clock budget, then generation\n\n"
        "fpjax pre-computes and trains image by image; DDPM trains on all images at once. Each generated image "
        "is scored by its SSIM to the nearest training image."
    ),
    nbf.v4.new_code_cell(
        "r3 = experiments.exp3(out, settings, progress=False)\n"
        "print(experiments.exp3_markdown(r3))\n"
        "fig = plt.figure(figsize=(9, 4)); plt.imshow(plt.imread(out / 'exp3_generated.png')); plt.axis('off'); plt.show()"
    ),
]

write_notebook(cells, "04_fpjax_vs_ddpm.ipynb")

"""Write notebooks/03_train_and_sample.ipynb (outputs empty; CI executes it)."""

import nbformat as nbf
from notebook_cells import install_cell, write_notebook

cells = [
    nbf.v4.new_markdown_cell(
        "# From sample images to denoised and generated images\n\n"
        "Pre-compute the scores, embed them, train a small U-Net image by image until the denoising SSIM "
        "reaches 0.9, then denoise and generate. CPU, about two minutes. On Colab the first cell installs fpjax."
    ),
    install_cell(),
    nbf.v4.new_code_cell(
        "import time\n"
        "import numpy as np, jax, jax.numpy as jnp\n"
        "import matplotlib.pyplot as plt\n"
        "import fpjax\n"
        "from fpjax.learn import trainer as training\n"
        "from fpjax.diffusion import sampling\n"
        "from fpjax.eval import metrics\n"
        "from fpjax.data import sample_images\n"
        "from fpjax.learn.models import UNetConfig\n"
        "from fpjax.eval.figures import plot_denoising, plot_ssim_vs_time\n"
        "images = sample_images(32)[[0, 7, 15]]\n"
        "config = fpjax.FPConfig()  # T = 100, g = 0.5, zero boundary: the papers' settings"
    ),
    nbf.v4.new_markdown_cell(
        "## Pre-compute and embed\n\n`x^n = x^(n-1) - 1/2 g^2 sigma^(n-1) dt`: the transport of each image by its own pixel score."
    ),
    nbf.v4.new_code_cell(
        "start = time.perf_counter()\n"
        "result = fpjax.precompute(images, config)\n"
        "trajectories = fpjax.embed(images, result.m, config)\n"
        "precompute_seconds = time.perf_counter() - start\n"
        "print(f'pre-computation + embedding: {precompute_seconds:.1f} s; trajectories {trajectories.shape}')\n"
        "fig, axes = plt.subplots(1, 4, figsize=(8, 2.2))\n"
        "for ax, n in zip(axes[:3], (0, 50, 100)):\n"
        "    ax.imshow(np.clip(trajectories[0, n], 0, 1)); ax.set_title(f'x^{n}'); ax.axis('off')\n"
        "im = axes[3].imshow(np.asarray(trajectories[0, 100] - trajectories[0, 0]).sum(-1), cmap='RdBu_r'); axes[3].axis('off')\n"
        "axes[3].set_title('x^100 - x^0'); plt.colorbar(im, ax=axes[3]); plt.show()"
    ),
    nbf.v4.new_markdown_cell(
        "## Train image by image to SSIM 0.9\n\n"
        "Eq. 29 with lambda = 0.1, Adam 1e-3; after every 25 steps the clean image plus a fixed noise draw "
        "(std 0.5) is denoised with the probability-flow sampler and compared with the clean image. "
        "`replay=0.5` draws half of each batch from the images trained before (pure image-by-image training, "
        "`replay=0`, forgets them)."
    ),
    nbf.v4.new_code_cell(
        "train_config = training.TrainConfig(target_ssim=0.9, max_steps=100, replay=0.5)\n"
        "unet = UNetConfig(channels=16, num_images=len(images))  # small, for a CPU: the default is 32\n"
        "# The FP config defines the SDE dx = g dW the loss, the check and the sampler use (run.sde).\n"
        "run = training.train(images, trajectories, config, unet_config=unet, config=train_config,\n"
        "                     precompute_seconds=precompute_seconds, progress=False)\n"
        "for s in run.images:\n"
        "    print(f\"image {s['image']}: {s['steps']} steps, SSIM {s['ssim']:.3f}, {s['train_seconds']:.1f} s\")\n"
        "plot_ssim_vs_time(run.log, train_config.target_ssim, precompute_seconds); plt.show()"
    ),
    nbf.v4.new_markdown_cell("## Denoise every image with the final model, and generate from noise"),
    nbf.v4.new_code_cell(
        "labels = jnp.arange(len(images))\n"
        "clean = jnp.asarray(images)\n"
        "noisy = sampling.noisy_copy(jax.random.key(1), clean, 0.5)\n"
        "sde = run.sde  # ConstantVE(g_value=0.5): the FP config's dx = g dW\n"
        "denoised = sampling.denoise(run.score(labels), noisy, jax.random.key(2), sde, train_config.sampler)\n"
        "generated = sampling.generate(run.score(labels), clean.shape, jax.random.key(3), sde, train_config.sampler)\n"
        "print('denoised SSIM', np.round(metrics.ssim(denoised, clean), 3), ' noisy SSIM', np.round(metrics.ssim(jnp.clip(noisy, 0, 1), clean), 3))\n"
        "print('generated: SSIM to nearest training image', np.round(metrics.nearest_ssim(generated, clean)[0], 3))\n"
        "plot_denoising(noisy, denoised, clean, generated, scores=metrics.ssim(denoised, clean)); plt.show()"
    ),
    nbf.v4.new_markdown_cell(
        "## Sampler and number of steps\n\nReverse SDE (eq. 30) against the probability-flow ODE, for the first image."
    ),
    nbf.v4.new_code_cell(
        "rows = []\n"
        "for method in ('sde', 'ode'):\n"
        "    for steps in (10, 50):\n"
        "        cfg = sampling.SamplerConfig(steps=steps, method=method)\n"
        "        out = sampling.denoise(run.score(labels[:1]), noisy[:1], jax.random.key(4), sde, cfg)\n"
        "        rows.append((method, steps, float(metrics.ssim(out, clean[:1])[0])))\n"
        "fig, ax = plt.subplots(figsize=(5, 3))\n"
        "for method in ('sde', 'ode'):\n"
        "    pts = [(s, q) for m, s, q in rows if m == method]\n"
        "    ax.plot(*zip(*pts), 'o-', label=method)\n"
        "ax.set_xlabel('sampler steps'); ax.set_ylabel('denoising SSIM'); ax.legend(); plt.show()"
    ),
]

write_notebook(cells, "03_train_and_sample.ipynb")

"""Write notebooks/02_batch_precompute.ipynb (outputs empty; CI executes it)."""

import nbformat as nbf
from notebook_cells import install_cell, write_notebook

cells = [
    nbf.v4.new_markdown_cell(
        "# Many images at once: batched precompute, cross-matrix projection, sharding, the store\n\n"
        "CPU, well under two minutes. On Colab the first cell installs fpjax."
    ),
    install_cell(),
    nbf.v4.new_code_cell(
        "import pathlib, tempfile, textwrap\n"
        "import numpy as np\n"
        "import matplotlib.pyplot as plt\n"
        "import fpjax\n"
        "from fpjax.data import sample_images, load_cifar10\n"
        "from fpjax.batch.precompute import precompute\n"
        "cifar = pathlib.Path('../../shared/data/cifar10_subset.npz')\n"
        "if cifar.exists():\n"
        "    images, _ = load_cifar10(cifar, 'truck'); images = images[:32]; print('CIFAR-10 trucks', images.shape)\n"
        "else:\n"
        "    images = np.concatenate([sample_images(32)] * 2); print('sample images', images.shape)\n"
        "config = fpjax.FPConfig(T=100, scheme=fpjax.LogDensity(solver='bicgstab_counted'))"
    ),
    nbf.v4.new_markdown_cell("## Batched precompute: one image at a time against batches of 16"),
    nbf.v4.new_code_cell(
        "for batch in (1, 16):\n"
        "    precompute(images[:batch], config, batch_size=batch)  # compile\n"
        "    result = precompute(images, config, batch_size=batch)\n"
        "    print(f'batch {batch:2d}: {result.seconds:.2f} s for {len(images)} images, '\n"
        "          f'outer/step {result.stats[\"outer_iterations\"].mean():.2f}, m {result.m.shape}')"
    ),
    nbf.v4.new_markdown_cell(
        "## Cross-matrix projection on and off\n\n"
        "A seed's per-step Krylov basis (dimension 20) gives each target's step an initial guess "
        "(`initial_guess`), or the answer itself (`approximate`, whose error shows in the residual)."
    ),
    nbf.v4.new_code_cell(
        "exact = precompute(images, config, batch_size=16)\n"
        "rows = []\n"
        "for mode in ('off', 'initial_guess', 'galerkin', 'approximate'):\n"
        "    r = precompute(images, config, projection=mode, cycle=32, batch_size=16)\n"
        "    err = np.linalg.norm(r.m - exact.m) / np.linalg.norm(exact.m)\n"
        "    rows.append((mode, r.seconds, r.stats['outer_iterations'].mean(), r.stats['linear_iterations'].mean(), err))\n"
        "    print(f'{mode:14s} {r.seconds:6.2f} s  outer/step {rows[-1][2]:.2f}  linear/step {rows[-1][3]:.2f}  rel. error {err:.1e}')\n"
        "fig, ax = plt.subplots(figsize=(6, 3))\n"
        "ax.bar([r[0] for r in rows], [r[3] for r in rows]); ax.set_ylabel('linear iterations per step'); plt.show()"
    ),
    nbf.v4.new_markdown_cell(
        "## Sharded over (simulated) devices\n\n"
        "A fresh process with four host devices; the batch is split over them with a `NamedSharding`, "
        "and the result equals the single-device run."
    ),
    nbf.v4.new_code_cell(
        "script = textwrap.dedent('''\n"
        "    import sys, jax, numpy as np, fpjax\n"
        "    from fpjax.data import sample_images\n"
        "    from fpjax.batch.precompute import precompute\n"
        "    print('devices:', jax.devices())\n"
        "    r = precompute(sample_images(32)[:8], fpjax.FPConfig(T=20), batch_size=8)\n"
        "    np.save(sys.argv[1], np.asarray(r.m))\n"
        "''')\n"
        "tmp = pathlib.Path(tempfile.mkdtemp())\n"
        "(tmp / 'run.py').write_text(script)\n"
        "env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')\n"
        "out = subprocess.run([sys.executable, str(tmp / 'run.py'), str(tmp / 'm.npy')], env=env, capture_output=True, text=True, check=True)\n"
        "print(out.stdout.strip())\n"
        "single = precompute(sample_images(32)[:8], fpjax.FPConfig(T=20), batch_size=8)\n"
        "print('max difference sharded vs single device:', float(np.abs(np.load(tmp / 'm.npy') - single.m).max()))"
    ),
    nbf.v4.new_markdown_cell("## The store: stream to zarr, resume, read back\n\nRerunning skips finished images."),
    nbf.v4.new_code_cell(
        "store = tmp / 'fp.zarr'\n"
        "first = precompute(images[:16], config, store=store, batch_size=8)\n"
        "again = precompute(images[:16], config, store=store, batch_size=8)\n"
        "print('first run', f'{first.seconds:.2f} s; rerun skipped', again.skipped, 'images in', f'{again.seconds:.2f} s')\n"
        "import zarr\n"
        "group = zarr.open_group(str(store))\n"
        "print(group['m'].shape, group['m'].chunks, dict(group.attrs)['fpjax']['config']['T'])\n"
        "m = group['m'][3, :, :, :, 0]   # one image, read lazily from disk\n"
        "fig, axes = plt.subplots(1, 4, figsize=(10, 2.5))\n"
        "for ax, n in zip(axes, (0, 10, 50, 100)):\n"
        "    ax.imshow(m[n]); ax.set_title(f't = {n / 100:.2f}'); ax.axis('off')\n"
        "plt.show()"
    ),
]
write_notebook(cells, "02_batch_precompute.ipynb")

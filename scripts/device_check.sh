#!/usr/bin/env bash
# The checks that matter on an accelerator, ready for the first one at hand: at most 8 minutes on one GPU (the
# steps' limits add up to 480 s).
#
#   scripts/device_check.sh [WHEELS_DIR] [OUT_DIR]
#
# WHEELS_DIR (default .whl, or $FPJAX_WHEELS): wheels of what the machine lacks (on our GPU machines: zarr,
# numcodecs, google-crc32c, donfig, dm-pix; ../shared/device/README.md), installed without the network into
# /tmp/fpjax-site; fpjax itself runs from this working tree. Without wheels, the machine's packages are used.
# OUT_DIR (default $OUT, else device_check_out): one log per step, each step's JSON, summary.json.
#
# Steps, each under its own time limit so that one that hangs cannot take the others' time:
#   1. the machine: jax's devices and versions;
#   2. the tests that depend on the device's arithmetic and compiler: solver (precision, autodiff, layouts,
#      projection), training, sampling;
#   3. fpjax bench solver --quick (fpjax against SciPy's spsolve);
#   4. the "auto" rules re-measured: preconditioner none against dst at 64..256, and the spectral scheme's
#      dense against FFT transforms at 256..1024 (both rules were tuned on a 2-core CPU);
#   5. training steps per second, fused (one lax.scan) against unfused steps, and the 1-device mesh against
#      the unplaced path (fpjax bench scale --devices 1 --fusion);
#   6. the scale benchmark's quick form (fpjax bench scale --counts 16 1010).
set -uo pipefail
cd "$(dirname "$0")/.."
wheels=${1:-${FPJAX_WHEELS:-.whl}}
out=${2:-${OUT:-device_check_out}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
python=${PYTHON:-python3}

if compgen -G "$wheels/*.whl" >/dev/null; then
  echo "installing from $wheels: $(cd "$wheels" && ls -- *.whl | tr '\n' ' ')"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fpjax-site \
    "$wheels"/*.whl || { echo "device_check: the wheels in $wheels did not install"; exit 1; }
  export PYTHONPATH=/tmp/fpjax-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  echo "no wheels in $wheels: using the machine's packages"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

declare -A status seconds
step() {  # step NAME LIMIT_SECONDS COMMAND...: run it, its output to $out/NAME.log, its status and time kept
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s)"
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  status[$name]=$?
  seconds[$name]=$((SECONDS - start))
  tail -n 4 "$out/$name.log"
  echo "-- $name: status ${status[$name]} in ${seconds[$name]} s"
}

step machine 30 "$python" -c "
import jax, jaxlib, flax, optax, lineax, zarr, fpjax
print('devices', jax.devices())
print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__,
      'lineax', lineax.__version__, 'zarr', zarr.__version__, 'fpjax', fpjax.__version__)
"
step tests 170 "$python" -m pytest -q -x -p no:cacheprovider -n 4 --junitxml="$out/tests.xml" \
  tests/solver tests/learn/test_trainer.py tests/learn/test_objectives.py tests/diffusion/test_sampling.py \
  tests/diffusion/test_pds.py tests/test_devices.py
step bench_solver 80 "$python" -m fpjax.cli bench solver --quick --out "$out/bench_solver.json"
step auto_preconditioner 50 "$python" -m fpjax.cli bench solver --sizes 64 128 256 --images 2 --repeats 2 \
  --batch 0 --no-autodiff --spsolve-images 0 0 0 --variants "picard+none" "picard+dst" \
  --out "$out/auto_preconditioner.json"
step auto_transform 40 "$python" - "$out/auto_transform.json" <<'EOF'
import json, sys, time
import jax, numpy as np
import fpjax
from fpjax.data import sample_images

rows = []
base = sample_images(128)[0]
for size in (256, 512, 1024):
    image = jax.image.resize(base, (size, size, 3), "linear")
    for transform in ("dense", "fft"):
        config = fpjax.FPConfig(T=20, scheme=fpjax.Spectral(transform=transform))
        solve = jax.jit(lambda x: fpjax.solve_image(x, config).m)
        solve(image).block_until_ready()  # compiles
        times = []
        for _ in range(3):
            start = time.perf_counter()
            solve(image).block_until_ready()
            times.append(time.perf_counter() - start)
        rows.append(dict(size=size, transform=transform, seconds=float(np.median(times))))
        print(rows[-1], flush=True)
json.dump(dict(device=str(jax.devices()[0]), rows=rows), open(sys.argv[1], "w"), indent=1)
EOF
step training_steps 60 "$python" -m fpjax.cli bench scale --devices 1 --steps 10 --repeats 5 --fusion \
  --out "$out/training_steps.json"
step scale_quick 50 "$python" -m fpjax.cli bench scale --counts 16 1010 --steps 20 --default-count 16 \
  --disk-mb 128 --out "$out/scale_quick.json"

"$python" - "$out" <<EOF
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
steps = {$(for name in "${!status[@]}"; do printf '"%s": (%s, %s), ' "$name" "${status[$name]}" "${seconds[$name]}"; done)}
figures = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "summary.json"}
summary = dict(steps={k: dict(status=s, seconds=t) for k, (s, t) in steps.items()}, figures=figures)
(out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
for name, (s, t) in sorted(steps.items()):
    print(f"{name:20s} {'ok' if s == 0 else f'FAILED ({s})':12s} {t:4d} s")
EOF
failed=0
for name in "${!status[@]}"; do [ "${status[$name]}" -eq 0 ] || failed=1; done
echo "wrote $out/summary.json"
exit $failed

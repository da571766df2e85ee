import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fpjax.learn.models import DDPM_CIFAR10, UNet, UNetConfig

TINY = UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(8,), groups=4)


def _randomised(model):
    """Zero-initialised output layers make a fresh U-Net the zero map; perturb every weight for the tests."""
    graphdef, params = nnx.split(model)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    leaves = [p + 0.1 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys, strict=True)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


@pytest.mark.parametrize("size, config", [(32, TINY), (64, TINY), (128, UNetConfig(channels=8, groups=4))])
def test_shapes(size, config):
    model = UNet(config, 3, size, rngs=nnx.Rngs(0))
    x = jnp.zeros((2, size, size, 3), jnp.float32)
    assert model(x, jnp.array([0.1, 0.9])).shape == (2, size, size, 3)


def test_output_channels_and_bad_sizes():
    model = UNet(UNetConfig(channels=8, groups=4, out_channels=1), 3, 32, rngs=nnx.Rngs(0))
    assert model(jnp.zeros((1, 32, 32, 3)), 0.5).shape == (1, 32, 32, 1)
    with pytest.raises(ValueError, match="divisible"):
        UNet(UNetConfig(channel_mult=(1, 2, 2, 2)), 3, 36, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="groups"):
        UNetConfig(channels=12, groups=8)
    with pytest.raises(ValueError, match="NHWC"):
        model(jnp.zeros((32, 32, 3)), 0.5)


@pytest.mark.parametrize("embedding", ["sinusoidal", "linear"])
def test_time_conditions_every_output(embedding):
    config = UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(8,), groups=4, time_embedding=embedding)
    model = _randomised(UNet(config, 1, 16, rngs=nnx.Rngs(0)))
    x = jax.random.uniform(jax.random.key(0), (1, 16, 16, 1), jnp.float32)
    early, late = model(x, jnp.array([0.1])), model(x, jnp.array([0.7]))
    assert float(jnp.max(jnp.abs(early - late))) > 1e-3
    # Deterministic: the same inputs give the same outputs.
    np.testing.assert_array_equal(early, model(x, jnp.array([0.1])))


def test_per_image_embedding_changes_output_and_is_required():
    config = UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(), groups=4, num_images=3)
    model = _randomised(UNet(config, 1, 16, rngs=nnx.Rngs(0)))
    x = jnp.ones((1, 16, 16, 1), jnp.float32)
    assert float(jnp.max(jnp.abs(model(x, 0.5, jnp.array([0])) - model(x, 0.5, jnp.array([2]))))) > 1e-3
    with pytest.raises(ValueError, match="labels"):
        model(x, 0.5)


def test_jit_matches_eager_and_dropout_needs_a_key():
    config = UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(8,), groups=4, dropout=0.5)
    model = _randomised(UNet(config, 3, 16, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), jnp.float32)

    @jax.jit
    def apply(params, x, t, key=None):
        return nnx.merge(graphdef, params)(x, t, dropout_key=key)

    t = jnp.array([0.2, 0.4])
    np.testing.assert_allclose(apply(params, x, t), model(x, t), rtol=1e-5, atol=1e-5)
    dropped = apply(params, x, t, jax.random.key(0))
    assert float(jnp.max(jnp.abs(dropped - model(x, t)))) > 1e-3


def test_ddpm_config_is_the_papers():
    assert DDPM_CIFAR10.channels == 128 and DDPM_CIFAR10.channel_mult == (1, 2, 2, 2)
    assert DDPM_CIFAR10.num_res_blocks == 2 and DDPM_CIFAR10.attention_resolutions == (16,)
    model = nnx.eval_shape(lambda: UNet(DDPM_CIFAR10, 3, 32, rngs=nnx.Rngs(0)))
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert 35e6 < count < 37e6  # Ho et al.: 35.7M

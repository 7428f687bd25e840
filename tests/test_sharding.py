"""The logical-axis rules give valid shardings on a device mesh, and sharding changes no number."""

import os

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

from blt_jax.models import model_config_from_dict
from blt_jax.experiment import load_experiment
from blt_jax.nn.blt import BLT
from blt_jax.parallel import LOGICAL_RULES, MESH_AXES
from blt_jax.params import init_params, logical_axes

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "tiny.py")


def test_sharded_forward_equals_single_device():
    assert jax.device_count() == 8  # conftest simulates 8 CPU devices
    config = model_config_from_dict(load_experiment(TINY).model)
    params = init_params(config, jax.random.key(0))
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    shardings = nn.logical_to_mesh_sharding(logical_axes(config), mesh, LOGICAL_RULES)
    sharded = jax.device_put(params, shardings)
    wq = sharded["global_transformer"]["layers_0"]["attention"]["wq"]  # [embed, heads, head_dim]
    assert wq.sharding.spec == jax.P("fsdp", "tensor", None)
    assert len(wq.addressable_shards) == 8 and wq.addressable_shards[0].data.shape == (32, 2, 16)

    tokens = np.random.default_rng(0).integers(4, 260, size=(4, 32)).astype(np.int32)
    lengths = np.tile(np.array([1] + [4] * 8, np.int32), (4, 1))
    batch = NamedSharding(mesh, jax.P(("data", "fsdp")))
    fn = jax.jit(lambda p, t, l: BLT(config).apply({"params": p}, t, l))
    want = np.asarray(fn(params, tokens, lengths))
    got = np.asarray(fn(sharded, jax.device_put(tokens, batch), jax.device_put(lengths, batch)))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

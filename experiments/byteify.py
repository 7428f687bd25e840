"""The options of `blt-jax byteify` as a config file: `--config experiments/byteify.py[:tiny]`, each
field overridable with `--config.a.b=v` (without `--config`, the same defaults are used, with
`--scale`). The fields are documented in `blt_jax.byteify.plan`."""

from blt_jax.byteify.plan import default_options


def get_config(arg=None):
    return default_options(arg or "small")

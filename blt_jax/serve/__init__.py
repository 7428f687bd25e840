"""`blt-jax serve`: an OpenAI-compatible HTTP server over continuous batching of the cached decoder.

`run(...)` loads a model, compiles its programs (the server answers /health with 503 meanwhile),
and serves until SIGTERM or Ctrl-C, after which the running completions end (or are cut at the grace
period) and it exits.
"""

from blt_jax.serve.run import run

__all__ = ["run"]

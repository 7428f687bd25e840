"""`python -m blt_jax` is the `blt-jax` command."""

from blt_jax.cli import main

if __name__ == "__main__":
    main()

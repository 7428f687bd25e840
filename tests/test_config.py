import dataclasses
import os

import pytest

from blt_jax.config import (
    BLTConfig,
    ConfigError,
    HashConfig,
    PatchingConfig,
    StackConfig,
    blt_from_dict,
    swiglu_hidden,
)
from blt_jax.experiment import load_experiment
from blt_jax.models import config_to_dict, model_config_from_dict
from blt_jax.params import abstract_params, count, count_by_group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiment(name):
    return load_experiment(os.path.join(ROOT, "experiments", f"{name}.py"))


def tiny_dict():
    return experiment("tiny").model.to_dict()


@pytest.mark.parametrize("dim,hidden", [(768, 2048), (1024, 2816), (1280, 3584), (2048, 5632), (4096, 11008)])
def test_swiglu_hidden_rule(dim, hidden):
    assert swiglu_hidden(dim) == hidden


@pytest.mark.parametrize(
    "patch,field,needle",
    [
        ({"encoder": {"n_heads": 5}}, "model.encoder.n_heads", "not divisible"),
        ({"encoder": {"window": 0}}, "model.encoder.window", ">= 1"),
        ({"latent": {"n_layers": 0}}, "model.latent.n_layers", "positive"),
        ({"patching": {"mode": "bpe_fancy"}}, "model.patching.mode", "unknown patching mode"),
        ({"hash": {"vocab": 1 << 30}}, "model.hash.vocab", "32-bit"),
        ({"hash": {"n_functions": 12}}, "model.hash.n_functions", "11 primes"),
        ({"decoder": {"dim": 48, "n_heads": 4, "ffn_hidden": 96}}, "model.decoder.dim", "must equal encoder.dim"),
        ({"cross_attn_heads": 3}, "model.cross_attn_heads", "must divide"),
        ({"dtype": "float8"}, "model.dtype", "unknown dtype"),
        ({"encoder": {"n_heads": 32}}, "model.encoder.n_heads", "even"),
        ({"latent_mask": "local_block_causal"}, "model.latent_mask", "expected one of block_causal, causal"),
    ],
)
def test_validation_names_the_field(patch, field, needle):
    raw = tiny_dict()
    for key, value in patch.items():
        if isinstance(value, dict):
            raw[key].update(value)
        else:
            raw[key] = value
    with pytest.raises(ConfigError) as info:
        model_config_from_dict(raw)
    assert info.value.field == field
    assert needle in str(info.value)


def test_unknown_field_suggests_the_right_one():
    raw = tiny_dict()
    raw["encoder"]["n_head"] = raw["encoder"].pop("n_heads")
    with pytest.raises(ConfigError, match=r"model\.encoder\.n_head: unknown field \(did you mean 'n_heads'\?\)"):
        model_config_from_dict(raw)


def test_unknown_kind():
    with pytest.raises(ConfigError, match="unknown model kind"):
        model_config_from_dict({"kind": "gpt"})


def test_configs_are_frozen_and_round_trip():
    config = model_config_from_dict(tiny_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.vocab_size = 5  # frozen
    assert model_config_from_dict(config_to_dict(config)) == config
    assert hash(config)  # usable as a static jit argument


def test_exclusive_patching_rules():
    with pytest.raises(ConfigError, match="threshold_add"):
        PatchingConfig(monotonic=True, threshold_add=0.1)


def test_direct_construction_errors_name_fields():
    with pytest.raises(ConfigError, match="^n_heads:"):
        StackConfig(dim=10, n_layers=1, n_heads=3, ffn_hidden=8)
    with pytest.raises(ConfigError, match="^group_sizes:"):
        HashConfig(group_sizes=(0,))


@pytest.mark.parametrize(
    "name,total,groups",
    [
        # Released counts (blt_spec.md 5.1): the 1B total equals a count of blt_1b/consolidated.pth.
        ("blt_1b", 4_533_879_808, {"hash_embeddings": 3_072_012_288, "global_transformer": 1_284_608_000}),
        ("blt_7b", 10_553_570_560, {"hash_embeddings": 3_840_015_360}),
        ("entropy_100m", 99_512_064, {}),
    ],
)
def test_released_parameter_counts(name, total, groups):
    config = model_config_from_dict(experiment(name).model)
    abstract = abstract_params(config)  # shapes only: no 18 GB allocation
    assert count(abstract) == total
    by_group = count_by_group(abstract)
    for group, n in groups.items():
        assert by_group[group] == n
    assert sum(by_group.values()) == total


def test_1b_breakdown_matches_reference_shapes():
    config = model_config_from_dict(experiment("blt_1b").model)
    a = abstract_params(config)
    enc, dec = a["local_encoder"], a["local_decoder"]
    assert count(enc["layers_0"]) == 12_847_104
    assert count(enc["patch_embedding_projection"]) == 2_097_152
    assert count(enc["cross_attn_layers_0"]) == 4_196_352
    assert count({k: v for k, v in dec.items() if k.startswith("layers_")}) == 115_623_936
    assert count({k: v for k, v in dec.items() if k.startswith("cross_attn")}) == 37_767_168
    assert count(dec["patch_embedding_projection"]) == 4_194_304
    assert "token_embedding_projection" not in a["global_transformer"]


def test_7b_has_global_input_projection():
    config = model_config_from_dict(experiment("blt_7b").model)
    assert config.has_latent_projection and config.latent_input_dim == 5120
    shape = abstract_params(config)["global_transformer"]["token_embedding_projection"]["kernel"].shape
    assert shape == (5120, 4096)


@pytest.mark.parametrize("name", ["tiny", "bench_small", "blt_1b", "blt_7b", "entropy_100m"])
def test_experiment_files_build(name):
    config = model_config_from_dict(experiment(name).model)
    assert config.vocab_size == 260


def test_bench_small_size():
    config = model_config_from_dict(experiment("bench_small").model)
    assert isinstance(config, BLTConfig)
    assert (config.encoder.ffn_hidden, config.latent.ffn_hidden) == (768, 1536)
    assert 100e6 < count(abstract_params(config)) < 104e6  # ~102M as in the transformers port


def test_blt_from_dict_requires_stacks():
    with pytest.raises(ConfigError, match="model"):
        blt_from_dict({"encoder": {"dim": 8, "n_layers": 1, "n_heads": 2}})

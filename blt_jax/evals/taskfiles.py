"""Task files for lm-evaluation-harness 0.4: one JSONL of items and one YAML config per task, and
group YAMLs, in a local directory that `--include-path` (ours) or `--include_path` (lm_eval's) reads.

A YAML names its JSONL by ABSOLUTE path: lm-eval 0.4.13 hands `dataset_kwargs` to
`datasets.load_dataset` untouched, which resolves a relative `data_files` against the current
working directory, not the YAML's. So the tasks run from any directory, but a moved or copied task
directory must be written again.

No lm-eval import here: writing tasks does not need the `eval` extra.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import yaml

from blt_jax import paths
from blt_jax.errors import InputError


def task_directory(directory: str) -> str:
    """`directory` as an absolute local path (created).

    Raises:
      InputError: a URI (lm-eval reads task files from a local disk).
    """
    if paths.is_uri(directory):
        raise InputError(
            f"{directory}: task files are read by lm-eval from a local disk; write them to a local directory"
        )
    directory = paths.resolve(directory)
    os.makedirs(directory, exist_ok=True)
    return directory


def _write(path: str, text: str) -> None:
    with paths.replacing(path) as partial, open(partial, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_task(directory: str, name: str, rows: Sequence[Mapping], config: Mapping) -> str:
    """Writes `<name>.jsonl` (the rows) and `<name>.yaml` (`config` with the task name and its data
    file filled in) into `directory` (absolute, see `task_directory`).

    Args:
      config: the rest of an lm-eval task config (output_type, doc_to_text, metric_list, ...).

    Returns:
      The YAML's path.
    """
    data_file = os.path.join(directory, f"{name}.jsonl")
    _write(data_file, "".join(json.dumps(dict(row), ensure_ascii=False) + "\n" for row in rows))
    full = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": data_file}},
        "test_split": "test",
        **config,
    }
    full.setdefault("metadata", {"version": 1.0})
    yaml_file = os.path.join(directory, f"{name}.yaml")
    _write(yaml_file, yaml.safe_dump(full, sort_keys=False, allow_unicode=True, width=1000))
    return yaml_file


def write_group(directory: str, group: str, tasks: Sequence[str], aggregate: Sequence[Mapping] = ()) -> str:
    """Writes `<group>.yaml`, an lm-eval group of `tasks` (with `aggregate_metric_list` if given)."""
    config: dict = {"group": group, "task": list(tasks)}
    if aggregate:
        config["aggregate_metric_list"] = [dict(a) for a in aggregate]
    config["metadata"] = {"version": 1.0}
    path = os.path.join(directory, f"{group}.yaml")
    _write(path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000))
    return path

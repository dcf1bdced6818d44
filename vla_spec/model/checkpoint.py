"""An OpenVLA checkpoint folder's files, read without torch: ``config.json`` (with
``dataset_statistics.json`` replacing its ``norm_stats`` when present) and the list of weight files.

What the CLI and the policies check before any weights load (:mod:`vla_spec.model.loading` reads
the weights); the layout is the one :mod:`vla_spec.model.loading` describes.
"""

from __future__ import annotations

import json
from pathlib import Path

from vla_spec.model.config import OpenVLAConfig
from vla_spec.normalization import read_norm_stats_file

CONFIG_FILE = "config.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
STATS_FILE = "dataset_statistics.json"


class CheckpointError(ValueError):
    """A checkpoint folder whose files do not match the model its config describes."""


def weight_files(folder: Path) -> dict[str, list[str]]:
    """``{shard file name: [tensor names it should hold]}`` (names empty = read all, single file)."""
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        with open(index_path, encoding="utf-8") as handle:
            weight_map = json.load(handle).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: needs a non-empty 'weight_map' {{tensor name: shard file}}")
        shards: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            shards.setdefault(shard, []).append(name)
        for shard, names in shards.items():
            if not (folder / shard).is_file():
                raise CheckpointError(
                    f"missing shard {folder / shard} (listed in {INDEX_FILE} for {len(names)} tensors, e.g. "
                    f"{names[0]!r}); download the complete checkpoint"
                )
        return shards
    if (folder / SINGLE_WEIGHTS_FILE).is_file():
        return {SINGLE_WEIGHTS_FILE: []}
    raise CheckpointError(f"{folder} has no weights: expected {SINGLE_WEIGHTS_FILE} or {INDEX_FILE} with its shards")


def read_config(folder: Path) -> OpenVLAConfig:
    """The checkpoint's ``config.json``, its ``norm_stats`` replaced by ``dataset_statistics.json``
    when the folder has one (no weights read)."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{folder} is not an OpenVLA checkpoint: {CONFIG_FILE} is missing")
    config = OpenVLAConfig.from_file(config_path)
    if (folder / STATS_FILE).is_file():
        config = config.with_norm_stats(read_norm_stats_file(folder / STATS_FILE))
    return config

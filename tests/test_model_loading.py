"""Loading the official Hugging Face checkpoint format: names, shapes, files, and every error path."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from vla_spec.model.config import CheckpointConfigError, OVERRIDES_KEY, OpenVLAConfig
from tests.goldens import TINY_CHECKPOINT, load_tiny
from vla_spec.model.tokenizer import MissingTokenizerError

if TYPE_CHECKING:  # torch and the model are imported by the tests, not at collection (conftest.TORCH_TESTS)
    from vla_spec.model import OpenVLA

pytestmark = pytest.mark.cpu

SHARD_1 = "model-00001-of-00002.safetensors"
SHARD_2 = "model-00002-of-00002.safetensors"
OFFICIAL_NAME = re.compile(
    r"^(vision_backbone\.(featurizer|fused_featurizer)\.\S+"
    r"|projector\.fc[123]\.(weight|bias)"
    r"|language_model\.model\.(embed_tokens\.weight|norm\.weight|layers\.\d+\.\S+)"
    r"|language_model\.lm_head\.weight)$"
)


@pytest.fixture(scope="module")
def tiny() -> OpenVLA:
    return load_tiny()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A writable copy of the tiny checkpoint."""
    return Path(shutil.copytree(TINY_CHECKPOINT, tmp_path / "ckpt"))


def read_index(folder: Path) -> dict:
    return json.loads((folder / "model.safetensors.index.json").read_text())


def rewrite_shard(folder: Path, shard: str, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / shard))
    edit(tensors)
    save_file(tensors, str(folder / shard), metadata={"format": "pt"})


def test_tiny_checkpoint_has_the_official_files():
    folder = TINY_CHECKPOINT
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [
            "config.json",
            "model.safetensors.index.json",
            SHARD_1,
            SHARD_2,
            "preprocessor_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
        + (["special_tokens_map.json"] if (folder / "special_tokens_map.json").exists() else [])
    )
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "openvla"
    assert config["text_config"]["vocab_size"] == 32064 and config["pad_token_id"] == 32000
    assert sorted(config["norm_stats"]) == ["libero_10", "libero_goal", "libero_object", "libero_spatial"]
    assert set(read_index(folder)["weight_map"].values()) == {SHARD_1, SHARD_2}


def test_parameter_names_follow_the_official_pattern(tiny):
    names = list(tiny.state_dict())
    assert [n for n in names if not OFFICIAL_NAME.match(n)] == []
    assert not [n for n in names if "gamma" in n]
    for required in (
        "vision_backbone.featurizer.cls_token",
        "vision_backbone.featurizer.reg_token",
        "vision_backbone.featurizer.blocks.0.ls1.scale_factor",
        "vision_backbone.featurizer.blocks.0.ls2.scale_factor",
        "vision_backbone.fused_featurizer.attn_pool.latent",
        "vision_backbone.fused_featurizer.norm.weight",
        "projector.fc1.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.lm_head.weight",
    ):
        assert required in names
    assert "vision_backbone.fused_featurizer.cls_token" not in names
    assert tuple(tiny.language_model.lm_head.weight.shape)[0] == 32064
    assert tiny.action_tokenizer.vocab_size == 32000


def test_towers_stop_after_the_block_they_take(tiny):
    """Each tower returns the reference's features, ``get_intermediate_layers(x, n={len - 2})``
    (bitwise, on the tiny checkpoint), without running its last block (whose output the reference
    computes and drops): a forward hook counts the calls of the last two blocks."""
    import torch

    calls = {}
    images = torch.rand(2, 3, tiny.config.image_size, tiny.config.image_size, generator=torch.Generator().manual_seed(0))
    for name in ("featurizer", "fused_featurizer"):
        tower = getattr(tiny.vision_backbone, name)
        (reference,) = tower.get_intermediate_layers(images, n={len(tower.blocks) - 2})
        hooks = [block.register_forward_hook(lambda *_, key=(name, k): calls.__setitem__(key, calls.get(key, 0) + 1))
                 for k, block in (("second to last", tower.blocks[-2]), ("last", tower.blocks[-1]))]
        with torch.no_grad():
            got = tower(images)
        for hook in hooks:
            hook.remove()
        assert torch.equal(got, reference.detach())
        assert got.shape == (2, tiny.vision_backbone.num_patches, tower.embed_dim)
    assert calls == {("featurizer", "second to last"): 1, ("fused_featurizer", "second to last"): 1}


def test_real_openvla_7b_shapes_on_meta_device():
    """The official config builds the official shapes (no memory: meta tensors).

    Its text_config is a diff against LlamaConfig defaults; the reference's defaults are pinned."""
    import torch

    from vla_spec.model import OpenVLA

    raw = json.loads((TINY_CHECKPOINT / "config.json").read_text())
    raw.pop(OVERRIDES_KEY)
    raw["text_config"] = {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16", "vocab_size": 32064}
    config = OpenVLAConfig.from_dict(raw)
    llama = config.llama_config()
    assert (llama.hidden_size, llama.num_hidden_layers, llama.num_key_value_heads, llama.rms_norm_eps) == (4096, 32, 32, 1e-6)
    assert config.timm_model_ids == ("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224")
    with torch.device("meta"):
        model = OpenVLA(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert shapes["projector.fc1.weight"] == (8704, 2176)
    assert shapes["projector.fc2.weight"] == (4096, 8704)
    assert shapes["projector.fc3.weight"] == (4096, 4096)
    assert shapes["language_model.model.embed_tokens.weight"] == (32064, 4096)
    assert shapes["language_model.lm_head.weight"] == (32064, 4096)
    assert shapes["vision_backbone.featurizer.reg_token"] == (1, 4, 1024)
    assert shapes["vision_backbone.featurizer.blocks.23.ls1.scale_factor"] == (1024,)
    assert shapes["vision_backbone.fused_featurizer.pos_embed"] == (1, 256, 1152)
    assert len(model.vision_backbone.featurizer.blocks) == 24 and len(model.vision_backbone.fused_featurizer.blocks) == 27
    assert model.vision_backbone.embed_dim == 2176 and model.vision_backbone.num_patches == 256


def test_loads_bfloat16_as_released(checkpoint):
    import torch

    from vla_spec.model import from_pretrained

    model = from_pretrained(checkpoint, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.language_model.model.rotary_emb.inv_freq.device.type == "cpu"


def test_single_file_weights_load_the_same(checkpoint, tiny):
    import torch
    from safetensors.torch import load_file, save_file

    from vla_spec.model import from_pretrained

    merged = {**load_file(str(checkpoint / SHARD_1)), **load_file(str(checkpoint / SHARD_2))}
    for name in (SHARD_1, SHARD_2, "model.safetensors.index.json"):
        (checkpoint / name).unlink()
    save_file(merged, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
    model = from_pretrained(checkpoint, dtype=torch.float32)
    reference = tiny.state_dict()
    assert all(torch.equal(tensor, reference[name]) for name, tensor in model.state_dict().items())


def test_missing_shard(checkpoint):
    from vla_spec.model import CheckpointError, from_pretrained

    (checkpoint / SHARD_2).unlink()
    with pytest.raises(CheckpointError, match=rf"missing shard .*{SHARD_2}.*model.safetensors.index.json"):
        from_pretrained(checkpoint)


def test_missing_tensor(checkpoint):
    from vla_spec.model import CheckpointError, from_pretrained

    name = "language_model.model.norm.weight"
    rewrite_shard(checkpoint, SHARD_2, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"{SHARD_2} lacks tensor '{re.escape(name)}'"):
        from_pretrained(checkpoint)
    index = read_index(checkpoint)
    del index["weight_map"][name]
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"1 tensors missing .*'{re.escape(name)}'"):
        from_pretrained(checkpoint)


def test_unexpected_tensor(checkpoint):
    import torch

    from vla_spec.model import CheckpointError, from_pretrained

    name = "vision_backbone.featurizer.blocks.0.ls1.gamma"  # the un-renamed LayerScale name
    rewrite_shard(checkpoint, SHARD_1, lambda t: t.__setitem__(name, torch.ones(32, dtype=torch.bfloat16)))
    with pytest.raises(CheckpointError, match=rf"unexpected tensor '{re.escape(name)}' in .*{SHARD_1}"):
        from_pretrained(checkpoint)


def test_wrong_shape(checkpoint):
    import torch

    from vla_spec.model import CheckpointError, from_pretrained

    name = "projector.fc3.bias"
    rewrite_shard(checkpoint, SHARD_1, lambda t: t.__setitem__(name, torch.zeros(7, dtype=torch.bfloat16)))
    with pytest.raises(CheckpointError, match=rf"'{re.escape(name)}' in .*{SHARD_1} has shape \[7\], but config.json implies \[32\]"):
        from_pretrained(checkpoint)


def test_missing_weights_and_config(checkpoint):
    from vla_spec.model import CheckpointError, from_pretrained

    for name in (SHARD_1, SHARD_2, "model.safetensors.index.json"):
        (checkpoint / name).unlink()
    with pytest.raises(CheckpointError, match="no weights: expected model.safetensors or model.safetensors.index.json"):
        from_pretrained(checkpoint)
    (checkpoint / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        from_pretrained(checkpoint)


def test_missing_tokenizer(checkpoint):
    from vla_spec.model import from_pretrained

    (checkpoint / "tokenizer.json").unlink()
    with pytest.raises(MissingTokenizerError, match="no tokenizer: expected one of tokenizer.json, tokenizer.model"):
        from_pretrained(checkpoint)


def test_dataset_statistics_file_overrides_config(checkpoint, tiny):
    import torch

    from vla_spec.model import from_pretrained

    raw = json.loads((TINY_CHECKPOINT / "config.json").read_text())["norm_stats"]
    entry = raw["libero_goal"]
    (checkpoint / "dataset_statistics.json").write_text(json.dumps({"my_robot": entry}))
    model = from_pretrained(checkpoint, dtype=torch.float32)
    assert list(model.norm_stats) == ["my_robot"]
    assert sorted(tiny.norm_stats) == ["libero_10", "libero_goal", "libero_object", "libero_spatial"]


def test_config_errors_name_the_problem():
    raw = json.loads((TINY_CHECKPOINT / "config.json").read_text())
    with pytest.raises(CheckpointConfigError, match="model_type must be 'openvla'"):
        OpenVLAConfig.from_dict({**raw, "model_type": "llama"})
    with pytest.raises(CheckpointConfigError, match="vision_backbone_id 'siglip-vit-so400m' is not supported"):
        OpenVLAConfig.from_dict({**raw, "vision_backbone_id": "siglip-vit-so400m"})
    with pytest.raises(CheckpointConfigError, match=f"{OVERRIDES_KEY} must be a list of two dicts"):
        OpenVLAConfig.from_dict({**raw, OVERRIDES_KEY: [{}]})
    official = {k: v for k, v in raw.items() if k != OVERRIDES_KEY}
    assert OpenVLAConfig.from_dict(official).timm_overrides == ({}, {})


def test_unknown_backend_is_refused():
    from vla_spec.model import from_pretrained

    with pytest.raises(ValueError, match="unknown backend 'onnx'"):
        from_pretrained(TINY_CHECKPOINT, backend="onnx")


def test_tiny_checkpoint_is_bfloat16_and_small():
    from safetensors import safe_open

    folder = TINY_CHECKPOINT
    dtypes = set()
    for shard in (SHARD_1, SHARD_2):
        with safe_open(str(folder / shard), framework="pt") as handle:
            dtypes |= {handle.get_slice(name).get_dtype() for name in handle.keys()}
    assert dtypes == {"BF16"}
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5_000_000
    assert read_index(folder)["metadata"]["total_size"] == sum(
        t.numel() * 2 for t in load_tiny().state_dict().values()
    )

"""A checkpoint that OpenVLA's own remote code loads, and that code's answers on it (``tox -e reference``).

    python scripts/make_reference_checkpoint.py build DIR [--tokenizer tokenizer.model] [--if-missing]
    python scripts/make_reference_checkpoint.py record DIR --out ANSWERS.json [--device cpu]

``build`` writes DIR (never inside the repository: about 1.4 GB) in the official format of
``openvla/openvla-7b``, with random weights from a fixed seed:

* the real towers, as the reference builds them from fixed timm ids whatever the config says
  (``vit_large_patch14_reg4_dinov2.lvd142m`` + ``vit_so400m_patch14_siglip_224``, about 0.7 B
  parameters), the fused GELU projector, and a tiny Llama (hidden 64, 2 layers) from
  ``text_config`` with the real padded vocabulary (32064);
* ``lm_head`` rows outside the action ids 31744..31999 set to zero and the action rows scaled by
  :data:`ACTION_LOGIT_SCALE`, so that greedy decoding emits action tokens (as a trained policy
  does) with margins far above bfloat16 rounding; the four LIBERO ``norm_stats`` shipped in
  ``vla_spec/stats``;
* Llama-2's ``tokenizer.model`` (not redistributable: ``--tokenizer`` or
  ``VLA_SPEC_LLAMA_TOKENIZER``) with ``<PAD>`` = 32000, as the released checkpoints ship it;
* the remote code, ``configuration_prismatic.py``, ``modeling_prismatic.py`` and
  ``processing_prismatic.py``, with the ``auto_map`` entries that point ``AutoConfig``,
  ``AutoModelForVision2Seq``, ``AutoImageProcessor`` and ``AutoProcessor`` at them.

The remote code comes from a package registry, never from this repository: the ``vlastudio``
wheel (:data:`REMOTE_CODE_PACKAGE`) ships OpenVLA's ``prismatic/extern/hf`` files unchanged;
``tox -e reference`` installs it with ``--no-deps``. Each file's SHA-256 must equal that of
openvla/openvla at commit c8f03f4 (:data:`REMOTE_CODE_SHA256`), so a changed file is refused, not
run as the reference. (vla-arena 1.0.0 also ships the files, but its ``predict_action`` replaces the
prompt's last token with 29871 instead of appending it: not the reference.)

``record`` runs the checkpoint's remote code (``HFRemoteOpenVLA``: greedy ``generate`` of 7 tokens,
29871 appended) on the golden images (``golden/images``) and writes the token ids, margins and top
logits to ANSWERS.json, which ``tests/test_model_hf_parity.py`` compares with the native model on
the same weights in the project's own environment (``--reference-answers``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

SEED = 0
ACTION_LOGIT_SCALE = 50.0  # lm_head init std 0.02 -> 1.0 on the action rows: logits of std ~8
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
REMOTE_CODE_PACKAGE = "vlastudio==0.2.2"
REMOTE_CODE_FOLDER = ("policy", "openvla", "prismatic", "extern", "hf")  # inside the vlastudio package
# sha256 of openvla/openvla c8f03f4 prismatic/extern/hf/<file>
REMOTE_CODE_SHA256 = {
    "configuration_prismatic.py": "68cc5ae34f1b46af3168d8d479cb81bb776965653453fd904aa8eefb6c8f9f68",
    "modeling_prismatic.py": "9ce241c5ca09a4bed73654d0ca509baaff0fc5887d0bdd62e360ca8254f7794a",
    "processing_prismatic.py": "2474a5c3fdd4ff15234924636dc0ead6419c89f49699193be47dbb87510a5425",
}
MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_prismatic.OpenVLAConfig",
    "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
}
PROCESSOR_AUTO_MAP = {
    "AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
    "AutoProcessor": "processing_prismatic.PrismaticProcessor",
}
GOLDEN_IMAGES = Path(__file__).resolve().parents[1] / "golden" / "images"
RECORD_CASES = (  # (golden image, instruction): five forwards of the full towers
    ("black", "put the bowl on the stove"),
    ("white", "open the middle drawer of the cabinet"),
    ("gradient", "pick up the alphabet soup and place it in the basket"),
    ("scene", "put the bowl on the stove"),
    ("marker", "open the middle drawer of the cabinet"),
)
RECORD_KEY = "libero_spatial"


def remote_code_files() -> dict[str, Path]:
    """The three reference files from the installed registry package, each checked against its hash."""
    spec = importlib.util.find_spec("vlastudio")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"the reference remote code is not installed: pip install --no-deps {REMOTE_CODE_PACKAGE} "
            "(tox -e reference does)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]).joinpath(*REMOTE_CODE_FOLDER)
    files = {name: folder / name for name in REMOTE_CODE_SHA256}
    for name, path in files.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        if digest != REMOTE_CODE_SHA256[name]:
            raise SystemExit(
                f"{path}: sha256 {digest} is not openvla/openvla c8f03f4's {REMOTE_CODE_SHA256[name]}; "
                f"install {REMOTE_CODE_PACKAGE} exactly"
            )
    return files


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def build(out: Path, tokenizer_model: Path) -> None:
    """Write the checkpoint to ``out`` (via ``out.partial``, renamed when complete)."""
    import torch

    from vla_spec.model.config import OpenVLAConfig
    from vla_spec.model.export import llama_text_config, openvla_config, save_weights, write_llama_tokenizer
    from vla_spec.model.modeling import OpenVLA
    from vla_spec.model.tokenizer import load_tokenizer
    from vla_spec.normalization import shipped_entries
    from vla_spec.tokens import ActionTokenizer

    code = remote_code_files()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write_llama_tokenizer(tokenizer_model, partial)
    config = openvla_config(llama_text_config(hidden_size=64, intermediate_size=128, layers=2, heads=4), None, shipped_entries(SUITES))
    config["auto_map"] = MODEL_AUTO_MAP
    start = time.time()
    torch.manual_seed(SEED)
    model = OpenVLA(OpenVLAConfig.from_dict(config), load_tokenizer(partial))
    actions = ActionTokenizer()
    with torch.no_grad():
        head = model.language_model.lm_head.weight
        rows = head[actions.first_action_id : actions.last_action_id + 1] * ACTION_LOGIT_SCALE
        head.zero_()
        head[actions.first_action_id : actions.last_action_id + 1] = rows
    print(f"built {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters in {time.time() - start:.0f} s")
    save_weights(model, config, partial)
    del model
    preprocessor = json.loads((partial / "preprocessor_config.json").read_text(encoding="utf-8"))
    _write_json(partial / "preprocessor_config.json", {**preprocessor, "auto_map": PROCESSOR_AUTO_MAP})
    _write_json(
        partial / "processor_config.json",
        {"auto_map": {"AutoProcessor": PROCESSOR_AUTO_MAP["AutoProcessor"]}, "processor_class": "PrismaticProcessor"},
    )
    for name, path in code.items():
        shutil.copyfile(path, partial / name)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    print(f"wrote {out} in {time.time() - start:.0f} s")


def record(folder: Path, answers: Path, device: str) -> None:
    """The remote code's greedy answers on :data:`RECORD_CASES` (float32 on CPU, bfloat16 on CUDA)."""
    import numpy as np
    import timm
    import torch
    import transformers
    from PIL import Image

    from vla_spec.model.hf_remote import HFRemoteOpenVLA

    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    start = time.time()
    remote = HFRemoteOpenVLA(folder, dtype=getattr(torch, dtype), device=device)
    images = [np.asarray(Image.open(GOLDEN_IMAGES / f"{name}.png").convert("RGB")) for name, _ in RECORD_CASES]
    prediction = remote.predict_action(images, [text for _, text in RECORD_CASES], RECORD_KEY)
    answers.parent.mkdir(parents=True, exist_ok=True)
    _write_json(answers, {
        "checkpoint": str(folder.resolve()),
        "dtype": dtype,
        "unnorm_key": RECORD_KEY,
        "cases": [list(case) for case in RECORD_CASES],
        "token_ids": prediction.token_ids.tolist(),
        "margins": prediction.margins.tolist(),
        "top_logits": prediction.top_logits.tolist(),
        "stack": {"transformers": transformers.__version__, "timm": timm.__version__, "torch": torch.__version__},
    })
    print(f"recorded the remote code's tokens on {len(RECORD_CASES)} images in {time.time() - start:.0f} s: {answers}")
    print(prediction.token_ids.tolist())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="write the checkpoint")
    make.add_argument("out", type=Path)
    make.add_argument("--tokenizer", type=Path, default=os.environ.get("VLA_SPEC_LLAMA_TOKENIZER"),
                      help="Llama-2's tokenizer.model (env: VLA_SPEC_LLAMA_TOKENIZER)")
    make.add_argument("--if-missing", action="store_true", help="do nothing when OUT already holds a config.json")
    rec = commands.add_parser("record", help="record the remote code's answers on the golden images")
    rec.add_argument("folder", type=Path)
    rec.add_argument("--out", type=Path, required=True, help="the answers JSON (for pytest --reference-answers)")
    rec.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.folder, args.out, args.device)
        return
    if args.if_missing and (args.out / "config.json").is_file():
        print(f"{args.out} exists: not rebuilt")
        return
    if args.tokenizer is None or not Path(args.tokenizer).is_file():
        sys.exit(f"--tokenizer: Llama-2's tokenizer.model is needed (got {args.tokenizer}); pass it or set VLA_SPEC_LLAMA_TOKENIZER")
    build(args.out, Path(args.tokenizer))


if __name__ == "__main__":
    main()

"""``vla-spec decode`` and ``vla-spec stats``: the action-token spec on the command line.

``decode`` turns seven action token ids into the normalized action, the un-normalized action
(``predict_action``) and, for LIBERO keys, what the robot is told per control step (OSC_POSE:
1.0 = 0.05 m / 0.5 rad; gripper after the evaluation's post-processing). ``stats`` lists the
shipped statistics with the grid step per axis.

Ids outside 31744..31999 are an error by default: the reference decode silently clips them (any
id below 31744 becomes +0.996, any id above 31999, e.g. <PAD> 32000, becomes -0.996), which hides
a model that emitted a non-action token. ``--allow-out-of-range`` decodes them the reference way.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from vla_spec.actions import ActionProcessor, LiberoOutputs
from vla_spec.commands import CliError
from vla_spec.gripper import ENV_CLOSE
from vla_spec.normalization import AXIS_NAMES, NO_NOOPS, UnnormKeyError, is_libero_key, shipped_norm_stats
from vla_spec.resolution import OSC_POSE_SCALE, PHYSICAL_UNITS, axis_resolutions
from vla_spec.tokens import ACTION_DIM, ActionTokenizer

OSC_POSE_NOTE = "LIBERO OSC_POSE: 1.0 = 0.05 m / 0.5 rad per 20 Hz step"


def register(subparsers: Any) -> None:
    """Add ``decode`` and ``stats`` to the ``vla-spec`` parser."""
    keys = ", ".join(sorted(shipped_norm_stats()))
    decode = subparsers.add_parser(
        "decode",
        help="decode 7 action token ids into a normalized and an un-normalized action",
        description="Decode 7 action token ids (x y z roll pitch yaw gripper) as predict_action does.",
    )
    decode.add_argument("ids", nargs="+", metavar="ID", help="seven token ids in 31744..31999")
    decode.add_argument(
        "--unnorm-key",
        required=True,
        metavar="KEY",
        help=f"statistics to un-normalize with: {keys}, or {{suite}}{NO_NOOPS} for a LIBERO suite",
    )
    decode.add_argument(
        "--allow-out-of-range",
        action="store_true",
        help="decode ids outside 31744..31999 by clipping, as the reference silently does",
    )
    decode.add_argument("--json", action="store_true", help="print one JSON object")
    decode.set_defaults(func=run_decode)

    stats = subparsers.add_parser(
        "stats",
        help="list the shipped norm stats keys with the per-axis grid step",
        description="List the shipped statistics and the action grid step per axis.",
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=run_stats)


def parse_ids(texts: Sequence[str], tokenizer: ActionTokenizer, allow_out_of_range: bool) -> np.ndarray:
    """The 7 ids as int64, or a :class:`CliError` saying what is wrong and how to fix it."""
    ids = []
    for text in texts:
        try:
            ids.append(int(text))
        except ValueError:
            raise CliError(f"token id {text!r} is not an integer; pass {ACTION_DIM} integers such as 31872") from None
    if len(ids) != ACTION_DIM:
        axes = " ".join(AXIS_NAMES)
        raise CliError(f"expected {ACTION_DIM} token ids (one per axis: {axes}), got {len(ids)}")
    outside = [i for i in ids if not tokenizer.first_action_id <= i <= tokenizer.last_action_id]
    span = f"{tokenizer.first_action_id}..{tokenizer.last_action_id}"
    if outside and not allow_out_of_range:
        raise CliError(
            f"token ids {outside} are not action tokens ({span}); "
            "pass --allow-out-of-range to clip them as the reference decode does"
        )
    if outside:
        print(f"vla-spec decode: warning: ids {outside} are outside {span}; decoded by clipping", file=sys.stderr)
    return np.array(ids, dtype=np.int64)


def select_processor(unnorm_key: str) -> ActionProcessor:
    """The output transform of the shipped statistics ``unnorm_key`` (``{suite}_no_noops`` selects
    the suite's, under the name asked for: :func:`vla_spec.normalization.resolve_unnorm_key`); an
    unknown key lists the valid keys."""
    try:
        return ActionProcessor.select(shipped_norm_stats(), unnorm_key)
    except UnnormKeyError as error:
        raise CliError(f"--unnorm-key: {error}") from None


def decode_report(ids: np.ndarray, processor: ActionProcessor) -> dict[str, Any]:
    """Everything ``decode`` prints, as plain JSON-ready values (SI units for ``physical``)."""
    normalized, action = processor.decode(ids)
    report: dict[str, Any] = {
        "unnorm_key": processor.unnorm_key,
        "axes": list(AXIS_NAMES),
        "token_ids": ids.tolist(),
        "normalized": normalized.tolist(),
        "action": action.tolist(),
        "physical": None,
        "physical_units": None,
        "env_gripper": None,
        "gripper_meaning": None,
    }
    if is_libero_key(processor.unnorm_key):
        env_gripper = float(LiberoOutputs(processor).env_command(action)[-1])
        report["physical"] = [float(v) for v in action[:6] * OSC_POSE_SCALE[:6]] + [None]
        report["physical_units"] = list(PHYSICAL_UNITS)
        report["env_gripper"] = env_gripper
        report["gripper_meaning"] = "close" if env_gripper == ENV_CLOSE else "open"
    return report


def format_decode(report: dict[str, Any]) -> str:
    """The human-readable table of a :func:`decode_report`."""
    libero = report["physical"] is not None
    note = OSC_POSE_NOTE if libero else "dataset units; no OSC_POSE meaning for this key"
    lines = [
        f"unnorm_key: {report['unnorm_key']} ({note})",
        f"{'axis':<8} {'token':>5} {'normalized':>11} {'action':>11}  per step",
    ]
    for i, axis in enumerate(report["axes"]):
        if not libero:
            meaning = "-"
        elif report["physical"][i] is None:
            meaning = f"env {report['env_gripper']:+.0f} ({report['gripper_meaning']})"
        else:
            meaning = f"{report['physical'][i]:+.6f} {report['physical_units'][i]}"
        numbers = f"{report['token_ids'][i]:>5} {report['normalized'][i]:>+11.6f} {report['action'][i]:>+11.6f}"
        lines.append(f"{axis:<8} {numbers}  {meaning}")
    return "\n".join(lines)


def run_decode(args: argparse.Namespace) -> int:
    ids = parse_ids(args.ids, ActionTokenizer(), args.allow_out_of_range)
    report = decode_report(ids, select_processor(args.unnorm_key))
    print(json.dumps(report) if args.json else format_decode(report))
    return 0


def stats_report() -> dict[str, Any]:
    """Each shipped key with its size and per-axis grid step (physical only for LIBERO keys)."""
    report = {}
    for key, stats in sorted(shipped_norm_stats().items()):
        libero = is_libero_key(key)
        report[key] = {
            "num_trajectories": stats.num_trajectories,
            "num_transitions": stats.num_transitions,
            "resolution": [
                {
                    "axis": row.axis,
                    "normalized": row.normalized,
                    "dataset_units": row.dataset_units,
                    "physical": row.physical if libero else None,
                    "physical_unit": row.physical_unit if libero else "",
                }
                for row in axis_resolutions(stats)
            ],
        }
    return report


def format_stats(report: dict[str, Any]) -> str:
    """The human-readable listing of a :func:`stats_report`."""
    lines = [
        "grid step per axis: normalized 2/255; dataset units (q99 - q01)/255; physical for LIBERO keys",
        f"({OSC_POSE_NOTE})",
    ]
    for key, entry in report.items():
        lines.append("")
        transitions = entry["num_transitions"] if entry["num_transitions"] is not None else "n/a"
        lines.append(f"{key}: trajectories {entry['num_trajectories']}, transitions {transitions}")
        lines.append(f"  {'axis':<8} {'normalized':>10} {'dataset':>12}  physical")
        for row in entry["resolution"]:
            physical = f"{row['physical']:.3g} {row['physical_unit']}" if row["physical"] is not None else "-"
            lines.append(f"  {row['axis']:<8} {row['normalized']:>10.6f} {row['dataset_units']:>12.6g}  {physical}")
    return "\n".join(lines)


def run_stats(args: argparse.Namespace) -> int:
    report = stats_report()
    print(json.dumps(report) if args.json else format_stats(report))
    return 0

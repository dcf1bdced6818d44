"""Camera sensitivity of the trained tiny VLA: rerun the held-out episodes it solves with LIBERO's
camera (``golden/tiny-vla-libero-object/evaluation.json``, ``held_out.solved``) under one camera
variation, into a resumable episode log; ``vla-spec report`` reads it, and ``vla-spec report
NONE.jsonl --compare VARIATION.jsonl`` pairs it with the same episodes under ``--camera none``.

    python scripts/camera_sensitivity.py --camera shift-2cm --log runs/solved-shift-2cm.jsonl

One worker, one torch thread (each episode is 100-280 policy steps; minutes on a CPU).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from vla_spec.commands.sim import build_policy, parse_cameras
from vla_spec.model.tiny import NAMED_CHECKPOINTS
from vla_spec.rollout import EpisodeSpec
from vla_spec.runner import run_episodes

CHECKPOINT = "tiny-vla-libero-object"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camera", required=True, help="one camera variation, e.g. shift-2cm (vla_spec.sim.cameras)")
    parser.add_argument("--log", required=True, type=Path, help="episode log to create or resume")
    args = parser.parse_args()
    (camera,) = parse_cameras(args.camera)
    held_out = json.loads((Path(NAMED_CHECKPOINTS[CHECKPOINT]) / "evaluation.json").read_text())["held_out"]
    specs = [EpisodeSpec(held_out["suite"], task, init, 0, camera) for task, init in held_out["solved"]]
    params = {"checkpoint": CHECKPOINT, "threads": "1"}
    results = run_episodes(functools.partial(build_policy, "openvla", **params), specs, args.log, workers=1, progress=False,
                           policy_name="openvla", policy_params=params)
    for result in results:
        print(f"task {result.task_id} init {result.init_index} camera {result.camera}: "
              f"{'solved' if result.success else 'failed'} in {result.steps} steps")
    print(f"{sum(r.success for r in results)}/{len(results)} solved under {camera}; log: {args.log}")


if __name__ == "__main__":
    main()

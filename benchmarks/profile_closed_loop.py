"""Where the CPU time of a closed-loop policy step goes: one LIBERO episode in this process.

Runs ``--steps`` policy steps (or the whole episode) of one episode with :class:`OpenVLAPolicy` in
this process (no Ray: the runner's in-process path, :func:`vla_spec.rollout.run_episode`), timing
each stage in CPU seconds of this process (``time.process_time``: every thread, so the renderer's
threads count; on a shared machine wall time says little) by wrapping the functions that do them:

* ``physics``: ``env.step`` less the render inside it (MuJoCo substeps, controller, observables);
* ``render``: ``MjSim.render`` (the agentview camera, EGL);
* ``rotate``: the 180 degree rotation of the frame (:func:`vla_spec.sim.interface.policy_image`);
* ``jpeg encode`` / ``jpeg decode`` / ``lanczos`` / ``crop``: the image path (:mod:`vla_spec.images`);
* ``processor``: the model's processor (resize check, prompt ids);
* ``towers``: vision towers + projector; ``prefix``: ``prefix_of_patches`` (layout, gather);
* ``decode``: the greedy decoder (prefill + 6 steps), split into ``prefill`` and ``decode steps``;
* ``actions``: un-normalization and the LIBERO output transform; ``other``: the rest of a step.

The stage times exclude the stages nested in them. ``--cprofile FILE`` also writes a cProfile
(process-time clock) of the same steps, and prints its top functions by internal time.

    MUJOCO_GL=egl python benchmarks/profile_closed_loop.py --task 3 --init 0 --steps 60 --json out.json
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Stages:
    """Exclusive CPU seconds per stage: a stage's own time, less the stages nested in it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[Any]] = []  # [name, start, nested seconds]

    def wrap(self, owner: Any, attribute: str, name: str | Any) -> None:
        """Time ``owner.attribute`` as stage ``name`` (or ``name()``, asked at each call)."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            stage = name if isinstance(name, str) else name()
            self.calls[stage] += 1
            self._stack.append([stage, time.process_time(), 0.0])
            try:
                return original(*args, **kwargs)
            finally:
                _, start, nested = self._stack.pop()
                spent = time.process_time() - start
                self.seconds[stage] += spent - nested
                if self._stack:
                    self._stack[-1][2] += spent

        setattr(owner, attribute, timed)


def instrument(stages: Stages) -> None:
    """Wrap the functions of each stage (module attributes are wrapped where they are looked up)."""
    import robosuite.utils.binding_utils as binding

    import vla_spec.images as images
    import vla_spec.model.decoding as decoding
    import vla_spec.model.modeling as modeling
    import vla_spec.model.network as network
    import vla_spec.sim.interface as interface
    from robosuite.environments.base import MujocoEnv
    from vla_spec.actions import LiberoOutputs
    from vla_spec.model.processor import OpenVLAProcessor

    stages.wrap(MujocoEnv, "step", "physics")
    stages.wrap(binding.MjSim, "render", "render")
    stages.wrap(interface, "rotate_180", "rotate")
    stages.wrap(images, "jpeg_bytes", "jpeg encode")
    stages.wrap(images, "jpeg_decode", "jpeg decode")
    stages.wrap(images, "resize_lanczos", "lanczos")
    stages.wrap(images, "center_crop", "crop")
    stages.wrap(OpenVLAProcessor, "resize", "processor")
    stages.wrap(OpenVLAProcessor, "prompt_ids", "processor")
    stages.wrap(network.OpenVLANetwork, "encode_images", "towers")
    stages.wrap(network.OpenVLANetwork, "prefix_of_patches", "prefix")
    stages.wrap(LiberoOutputs, "env_command", "actions")
    from transformers import LlamaForCausalLM

    def llama_stage() -> str:  # the first forward of a decode is the prefill
        first = stages.calls["decode"] > llama_stage.decodes  # type: ignore[attr-defined]
        llama_stage.decodes = stages.calls["decode"]  # type: ignore[attr-defined]
        return "prefill" if first else "decode steps"

    llama_stage.decodes = 0  # type: ignore[attr-defined]
    stages.wrap(decoding, "greedy_decode", "decode")
    modeling.greedy_decode = decoding.greedy_decode  # the default decoder, looked up at OpenVLA.__init__
    stages.wrap(LlamaForCausalLM, "forward", llama_stage)
    from vla_spec.model.fast_decoding import FastGreedyDecoder

    stages.wrap(FastGreedyDecoder, "__call__", "fast decode")  # static cache: prefill and steps in one stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="tiny-vla-libero-object")
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--task", type=int, default=3)
    parser.add_argument("--init", type=int, default=0)
    parser.add_argument("--steps", type=int, help="policy steps to time (default: the whole episode)")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--decoder", default="fast", help="the policy's decoder: fast (default) or naive")
    parser.add_argument("--cprofile", type=Path, help="also write a cProfile (process-time clock) here")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")

    from vla_spec.rollout import Episode, EpisodeSpec
    from vla_spec.sim.openvla_policy import OpenVLAPolicy

    stages = Stages()
    instrument(stages)
    policy = OpenVLAPolicy(args.checkpoint, threads=args.threads, decoder=args.decoder)
    spec = EpisodeSpec(args.suite, args.task, args.init)
    episode = Episode(spec, needs_camera=True, record_trace=True)
    policy.reset(episode.start())  # builds the env, loads the model: not timed
    stages.seconds.clear()
    stages.calls.clear()
    profiler = cProfile.Profile(time.process_time) if args.cprofile else None
    limit = args.steps or 10**9
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    while not episode.over and episode.steps < limit:
        episode.advance(policy.act(episode.observation))
    if profiler:
        profiler.disable()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    steps = episode.steps
    named = sum(stages.seconds.values())
    rows = {name: seconds for name, seconds in sorted(stages.seconds.items(), key=lambda kv: -kv[1])}
    rows["other"] = cpu - named
    print(f"{spec}: {steps} policy steps, success {episode.success}; {cpu:.2f} CPU s ({1000 * cpu / steps:.1f} ms/step), "
          f"{wall:.2f} wall s; load average {os.getloadavg()}")
    for name, seconds in rows.items():
        print(f"  {name:14s} {1000 * seconds / steps:8.2f} ms/step  {100 * seconds / cpu:5.1f} %")
    trace = episode.trace or []
    if args.json:
        args.json.write_text(json.dumps({
            "spec": vars(spec) if hasattr(spec, "__dict__") else str(spec), "steps": steps, "success": episode.success,
            "cpu_s": cpu, "wall_s": wall, "ms_per_step": {k: 1000 * v / steps for k, v in rows.items()},
            "fraction": {k: v / cpu for k, v in rows.items()}, "load_average": os.getloadavg(),
            "tokens": [t["tokens"] for t in trace], "actions": [t["action"] for t in trace],
        }, indent=1))
    if profiler:
        profiler.dump_stats(str(args.cprofile))
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()

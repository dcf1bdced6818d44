"""CPU seconds of an episode's start (:func:`vla_spec.rollout.start_episode`: seed, reset, initial
state, 10 wait steps), one environment in this process, on consecutive official init states.

The first start after building the environment is left out (``--starts`` counts the rest). CPU time
of the process (``time.process_time``: every thread, so Mesa's rendering threads count). It also
hashes each start's first frame and simulator state, so two versions of the code can be compared
for the same episodes (run it once per version, e.g. with ``PYTHONPATH`` pointing at each checkout):

    MUJOCO_GL=egl OMP_NUM_THREADS=1 python benchmarks/bench_episode_start.py --task 3 --starts 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after PYTHONPATH: another checkout given there is the code measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--task", type=int, default=3)
    parser.add_argument("--starts", type=int, default=6, help="timed starts after the first")
    parser.add_argument("--cameras", default="agentview", help="comma-separated; empty for none")
    args = parser.parse_args()

    import vla_spec
    from vla_spec.rollout import start_episode
    from vla_spec.sim.env import get_env
    from vla_spec.sim.fingerprint import sha256_of
    from vla_spec.sim.suites import init_states

    cameras = tuple(name for name in args.cameras.split(",") if name)
    env = get_env(args.suite, args.task, cameras=cameras)
    states = init_states(args.suite, args.task)
    seconds, hashes = [], []
    for index in range(args.starts + 1):
        began = time.process_time()
        observation = start_episode(env, states[index])
        if index:
            seconds.append(time.process_time() - began)
        images = [observation[f"{camera}_image"] for camera in cameras]
        hashes.append(sha256_of(env.get_sim_state(), *images))
    print(json.dumps({
        "code": str(Path(vla_spec.__file__).parent.parent), "suite": args.suite, "task": args.task, "cameras": list(cameras),
        "cpu_s_per_start": [round(s, 3) for s in seconds], "median_cpu_s": round(statistics.median(seconds), 3),
        "state_and_frame_sha256": [h[:16] for h in hashes],
    }))


if __name__ == "__main__":
    main()

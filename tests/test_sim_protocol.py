"""The LIBERO evaluation protocol, pinned against the installed benchmark (facts §3, libero-facts).

Spec: 4 suites of 10 tasks, 50 initial states each; the instruction is ``task.language``;
``max_steps`` 220/280/300/520 (400 for libero_90); 10 wait steps of ``[0,0,0,0,0,0,-1]``;
``env.seed(0)``; 256x256 cameras; success is ``done``; ``env.step`` beyond the horizon raises;
the image given to the policy is ``img[::-1, ::-1]`` (a 180 degree rotation, not ``flipud``).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from vla_spec.rollout import EpisodeSpec, run_episode, start_episode
from vla_spec.sim import suites
from vla_spec.sim.env import LIBERO_CAMERAS, get_env
from vla_spec.sim.expert import PickPlaceExpert
from vla_spec.sim.interface import Observation, PolicyStep, TaskContext, make_observation, policy_image

pytestmark = pytest.mark.sim


def test_protocol_constants_match_the_openvla_evaluation() -> None:
    assert suites.MAX_STEPS == {
        "libero_spatial": 220,
        "libero_object": 280,
        "libero_goal": 300,
        "libero_10": 520,
        "libero_90": 400,
    }
    assert suites.NUM_STEPS_WAIT == 10
    assert suites.WAIT_ACTION == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    assert suites.ENV_SEED == 0
    assert suites.CAMERA_SIZE == 256
    assert suites.INIT_STATES_PER_TASK == 50
    # the protocol never reaches LIBERO's horizon
    assert max(suites.MAX_STEPS.values()) + suites.NUM_STEPS_WAIT < suites.ENV_HORIZON


@pytest.mark.parametrize("suite", suites.EVAL_SUITES)
def test_suite_has_ten_tasks_with_fifty_init_states(suite: str) -> None:
    assert suites.num_tasks(suite) == suites.TASKS_PER_EVAL_SUITE
    for task_id in range(suites.TASKS_PER_EVAL_SUITE):
        states = suites.init_states(suite, task_id)
        assert states.dtype == np.float64
        assert states.ndim == 2 and states.shape[0] == suites.INIT_STATES_PER_TASK
        assert len({row.tobytes() for row in states}) == suites.INIT_STATES_PER_TASK  # 50 distinct states
    with pytest.raises(IndexError, match="tasks 0..9"):
        suites.task_info(suite, 10)


def test_instructions_are_task_language(golden) -> None:  # type: ignore[no-untyped-def]
    """All 40 instructions as a golden; they are ``task.language``, not the BDDL's own string."""
    from libero.libero import benchmark

    instructions = {}
    for suite in suites.EVAL_SUITES:
        bench = benchmark.get_benchmark_dict()[suite]()
        for task_id in range(bench.n_tasks):
            info = suites.task_info(suite, task_id)
            assert info.instruction == bench.get_task(task_id).language
            instructions[f"{suite}/{task_id}"] = info.instruction
        assert len({instructions[f"{suite}/{t}"] for t in range(bench.n_tasks)}) == bench.n_tasks
    assert instructions["libero_object/0"] == "pick up the alphabet soup and place it in the basket"
    assert instructions == golden


def _protocol_written_out(env, init_state: np.ndarray) -> dict:  # type: ignore[no-untyped-def]
    """``run_libero_eval.py``'s episode start, every wait step rendered."""
    env.seed(suites.ENV_SEED)
    env.reset()
    obs = env.set_init_state(init_state)
    for _ in range(suites.NUM_STEPS_WAIT):
        obs, _reward, _done, _info = env.step(list(suites.WAIT_ACTION))
    return obs


def test_camera_env_images_and_the_180_degree_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    env = get_env("libero_object", 0, cameras=LIBERO_CAMERAS)
    written_out = _protocol_written_out(env, suites.init_states("libero_object", 0)[0])
    renders, simulator = [], type(env.env.sim)  # reset builds a new simulator: count on the class
    render = simulator.render
    monkeypatch.setattr(simulator, "render", lambda *args, **kwargs: renders.append(kwargs["camera_name"]) or render(*args, **kwargs))
    obs = start_episode(env, suites.init_states("libero_object", 0)[0])
    monkeypatch.undo()
    # start_episode renders only the last wait step's frames (after reset's own: 14 per camera written
    # out) and gives the protocol's observation bit for bit: the images, the robot and object states
    assert renders[-len(LIBERO_CAMERAS) :] == list(LIBERO_CAMERAS) and len(renders) < 6 * len(LIBERO_CAMERAS)
    assert obs.keys() == written_out.keys()
    for key, value in written_out.items():
        np.testing.assert_array_equal(obs[key], value, err_msg=key)
    for key in ("agentview_image", "robot0_eye_in_hand_image"):
        assert obs[key].shape == (suites.CAMERA_SIZE, suites.CAMERA_SIZE, 3)
        assert obs[key].dtype == np.uint8
    raw = obs["agentview_image"]
    image = policy_image(obs)
    np.testing.assert_array_equal(image, raw[::-1, ::-1])
    np.testing.assert_array_equal(image, np.rot90(raw, 2))
    assert not np.array_equal(image, np.flipud(raw))  # a rotation, not a vertical flip
    assert make_observation(obs, 0).image is not None
    assert env.env.horizon == suites.ENV_HORIZON


def test_camera_less_env_has_no_images_and_says_so() -> None:
    env = get_env("libero_object", 0, cameras=())
    obs = start_episode(env, suites.init_states("libero_object", 0)[0])
    assert not any(key.endswith("_image") for key in obs)
    assert make_observation(obs, 0).image is None
    with pytest.raises(KeyError, match="needs_camera"):
        policy_image(obs)


def test_success_is_the_done_flag_and_run_episode_agrees() -> None:
    """Drive the expert by hand: ``done`` equals ``_check_success()`` at every step; ``run_episode``
    stops at the first ``done`` with the same step count and records 7 tokens per step."""
    suite, task_id, init_index = "libero_object", 0, 0
    env = get_env(suite, task_id, cameras=())
    obs = start_episode(env, suites.init_states(suite, task_id)[init_index])
    assert not env.check_success()
    expert = PickPlaceExpert()
    info = suites.task_info(suite, task_id)
    expert.reset(TaskContext(suite, task_id, info.instruction, init_index, info.max_steps, env))
    first_done = None
    for step in range(info.max_steps):
        obs, reward, done, _ = env.step(expert.act(make_observation(obs, step)).action.tolist())
        assert done == env.check_success()
        assert reward == (1.0 if done else 0.0)
        if done:
            first_done = step + 1
            break
    assert first_done is not None, "the expert did not solve libero_object task 0 init 0"

    result = run_episode(PickPlaceExpert(), EpisodeSpec(suite, task_id, init_index), record_trace=True)
    assert result.error is None
    assert result.success and result.steps == first_done
    assert result.instruction == info.instruction
    assert len(result.trace) == result.steps
    assert all(len(entry["tokens"]) == 7 and len(entry["action"]) == 7 for entry in result.trace)
    json.dumps(dataclasses.asdict(result))  # the result is JSON-serializable


def test_step_beyond_the_horizon_raises() -> None:
    """Each ``env.step`` counts one toward the horizon (the wait steps count 10), the horizon-th step
    ends the episode (robosuite's ``done``; LIBERO returns success as ``done``) and the next one raises. The counter is moved to the horizon's last
    step rather than stepped there: 980 more steps would check nothing else (about 20 CPU-seconds)."""
    env = get_env("libero_object", 0, cameras=())
    start_episode(env, suites.init_states("libero_object", 0)[0])
    assert env.env.timestep == suites.NUM_STEPS_WAIT and env.env.horizon == suites.ENV_HORIZON
    env.step(list(suites.WAIT_ACTION))
    assert not env.env.done
    env.env.timestep = suites.ENV_HORIZON - 1
    env.step(list(suites.WAIT_ACTION))
    assert env.env.done
    with pytest.raises(ValueError, match="executing action in terminated episode"):
        env.step(list(suites.WAIT_ACTION))


class _Raising:
    needs_camera = False

    def reset(self, task: TaskContext) -> None:
        pass

    def act(self, obs: Observation) -> PolicyStep:
        if obs.step == 3:
            raise RuntimeError("boom")
        return PolicyStep(action=np.array(suites.WAIT_ACTION))


class _BadShape(_Raising):
    def act(self, obs: Observation) -> PolicyStep:
        return PolicyStep(action=np.zeros(6))


@pytest.mark.parametrize(
    ("policy", "error", "steps"),
    [(_Raising(), "RuntimeError: boom", 3), (_BadShape(), "ValueError: policy action must be 7 finite floats", 0)],
)
def test_an_exception_is_a_failed_episode_not_a_crash(policy: object, error: str, steps: int) -> None:
    result = run_episode(policy, EpisodeSpec("libero_object", 0, 0))  # type: ignore[arg-type]
    assert result.success is False
    assert result.error is not None and result.error.startswith(error)
    assert result.steps == steps


def test_bad_spec_is_reported_in_the_result() -> None:
    result = run_episode(PickPlaceExpert(), EpisodeSpec("libero_object", 0, suites.INIT_STATES_PER_TASK))
    assert result.success is False and result.error.startswith("IndexError: libero_object task 0 has init states 0..49")
    result = run_episode(PickPlaceExpert(), EpisodeSpec("libero_nonexistent", 0, 0))
    assert result.error.startswith("ValueError: unknown LIBERO suite 'libero_nonexistent'")

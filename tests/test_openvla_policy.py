"""The model meets the simulator: OpenVLA (the tiny checkpoint) as a LIBERO policy.

A real LIBERO frame goes through the evaluation's image path into the model, and the model's 7
tokens go through the evaluation's action path into ``env.step``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.sim

SUITE, TASK, INIT = "libero_object", 0, 0


@pytest.fixture(scope="module")
def first_frame():
    """(env, observation) after reset, init state 0 and the 10 wait steps, with the camera on."""
    from vla_spec.rollout import start_episode
    from vla_spec.sim.env import POLICY_CAMERAS, drop_env, get_env
    from vla_spec.sim.suites import init_states

    env = get_env(SUITE, TASK, cameras=POLICY_CAMERAS)
    yield env, start_episode(env, init_states(SUITE, TASK)[INIT])
    drop_env(SUITE, TASK, cameras=POLICY_CAMERAS)


def _task_context(env):
    from vla_spec.sim.interface import TaskContext
    from vla_spec.sim.suites import task_info

    info = task_info(SUITE, TASK)
    return TaskContext(SUITE, TASK, info.instruction, INIT, info.max_steps, env=None)


def test_tiny_model_tokens_on_a_libero_frame(first_frame, golden):
    """Golden tokens for a real agentview frame (pinned per mujoco 3.3.2 rendering and cpu/float32)."""
    from vla_spec.images import model_image
    from tests.goldens import load_tiny
    from vla_spec.sim.interface import policy_image
    from vla_spec.sim.suites import task_info

    _env, obs = first_frame
    image = model_image(policy_image(obs))
    prediction = load_tiny().predict_action(image, task_info(SUITE, TASK).instruction, SUITE)
    assert golden == {
        "instruction": task_info(SUITE, TASK).instruction,
        "token_ids": prediction.token_ids[0].tolist(),
        "margins": [round(float(m), 3) for m in prediction.margins[0]],
    }


def test_openvla_policy_steps_the_env(first_frame):
    """Three policy steps: action tokens in 31744..31999, finite commands, a binary env gripper."""
    from vla_spec.sim.interface import make_observation
    from vla_spec.sim.openvla_policy import OpenVLAPolicy
    from vla_spec.tokens import ActionTokenizer

    env, obs = first_frame
    policy = OpenVLAPolicy("tiny-openvla")
    policy.reset(_task_context(env))
    for step in range(3):
        out = policy.act(make_observation(obs, step))
        assert ActionTokenizer().is_action_id(np.asarray(out.tokens)).all()
        assert out.action.shape == (7,) and np.isfinite(out.action).all()
        assert out.action[-1] in (-1.0, 1.0)
        obs, _reward, _done, _info = env.step(out.action.tolist())


def test_openvla_policy_rejects_an_unknown_unnorm_key(first_frame):
    from vla_spec.normalization import UnnormKeyError
    from vla_spec.sim.openvla_policy import OpenVLAPolicy

    env, _obs = first_frame
    with pytest.raises(UnnormKeyError, match="valid keys: libero_10, libero_goal, libero_object, libero_spatial"):
        OpenVLAPolicy("tiny-openvla", unnorm_key="bridge_orig").reset(_task_context(env))


def test_openvla_policy_needs_an_explicit_checkpoint():
    """No silent fallback: a missing or unknown checkpoint is an error naming the choices."""
    from vla_spec.sim.openvla_policy import OpenVLAPolicy

    with pytest.raises(TypeError):
        OpenVLAPolicy()  # type: ignore[call-arg]
    with pytest.raises(FileNotFoundError, match="named checkpoint \\(tiny-openvla, tiny-vla-libero-object\\)"):
        OpenVLAPolicy("no-such-checkpoint")

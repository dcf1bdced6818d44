"""Recording demonstrations (``vla-spec demos``): one scripted-expert episode from a fresh seeded
scene becomes one LIBERO-layout HDF5 file with the model's images and training-convention actions;
a rerun resumes instead of recording again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.sim

SPEC_ARGS = ("libero_object", 0, 7)  # suite, task, seed: a scene none of the official init states is


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from vla_spec.demos import DemoSpec, record_demos

    out = tmp_path_factory.mktemp("demos")
    outcomes = record_demos([DemoSpec(*SPEC_ARGS)], out, workers=1, progress=False)
    return out, outcomes[0]


def test_one_successful_demo_in_the_libero_layout(recorded) -> None:
    import h5py

    out, outcome = recorded
    assert outcome.path == out / "libero_object" / "task00_seed00007.hdf5" and not outcome.skipped
    with h5py.File(outcome.path, "r") as handle:
        info = json.loads(handle["data"].attrs["problem_info"])
        assert info["language_instruction"] == "pick up the alphabet soup and place it in the basket"
        demo = handle["data/demo_0"]
        steps = demo.attrs["num_samples"]
        assert steps == outcome.steps and 50 < steps < 280  # the expert succeeded inside the step budget
        assert demo["obs/agentview_rgb"].shape == (steps, 224, 224, 3) and demo["obs/agentview_rgb"].dtype == np.uint8
        actions = demo["actions"][:]
        assert actions.shape == (steps, 7)
        assert set(np.unique(actions[:, 6])) == {0.0, 1.0}  # training convention: 1 open, 0 close
        assert actions[0, 6] == 1.0 and demo["dones"][-1] == 1 and demo["rewards"][:].sum() == 1.0


def test_demo_images_are_the_evaluation_path_before_the_crop(recorded) -> None:
    """Frame 0 equals the live first observation through model_image(..., center_crop_enabled=False)."""
    import h5py

    from vla_spec.images import model_image
    from vla_spec.sim.env import POLICY_CAMERAS, get_env
    from vla_spec.sim.interface import make_observation
    from vla_spec.sim.suites import NUM_STEPS_WAIT, WAIT_ACTION

    _out, outcome = recorded
    env = get_env("libero_object", 0, cameras=POLICY_CAMERAS)
    env.seed(SPEC_ARGS[2])
    obs = env.reset()
    for _ in range(NUM_STEPS_WAIT):
        obs, *_ = env.step(list(WAIT_ACTION))
    expected = model_image(make_observation(obs, 0).image, center_crop_enabled=False)
    with h5py.File(outcome.path, "r") as handle:
        assert np.array_equal(handle["data/demo_0/obs/agentview_rgb"][0], expected)


def test_rerun_resumes_and_loads(recorded) -> None:
    import h5py

    from vla_spec.demos import DemoSpec, demo_files, load_demos, noop_mask, record_demos

    out, outcome = recorded
    again = record_demos([DemoSpec(*SPEC_ARGS)], out, workers=1, progress=False)[0]
    assert again.skipped and again.path == outcome.path and again.steps == outcome.steps
    everything = load_demos(demo_files(out), stride=2, drop_noops=False)
    assert len(everything.actions) == (outcome.steps + 1) // 2
    assert everything.instructions == ("pick up the alphabet soup and place it in the basket",)
    with h5py.File(outcome.path, "r") as handle:
        actions = handle["data/demo_0/actions"][:]
    noops = noop_mask(actions)
    assert noops.any()  # the expert holds still while the gripper closes
    assert np.linalg.norm(actions[noops, :3], axis=1).max() < 0.02 and (actions[1:, 6] == actions[:-1, 6])[noops[1:]].all()
    filtered = load_demos(demo_files(out), stride=1)
    assert np.array_equal(filtered.actions, actions[~noops])


def test_training_script_packs_and_trains_a_checkpoint_in_the_official_format(recorded, tmp_path: Path) -> None:
    """``scripts/train_tiny_vla.py`` end to end on the recorded demo (two steps, tiny widths): the
    checkpoint's statistics are the q01/q99 of the demo's actions after the no-op filter, stored
    under the suite's key beside ``bridge_orig``, with the gripper left unnormalized."""
    import subprocess
    import sys

    import h5py

    from vla_spec.demos import noop_mask

    out, outcome = recorded
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_tiny_vla.py"
    subprocess.run([sys.executable, str(script), "pack", "--demos", str(out / "libero_object"), "--out", str(tmp_path / "shard")], check=True)
    tiny = ["--tower-width", "32", "--tower-depth", "1", "--tower-heads", "2", "--llm-width", "32", "--llm-intermediate", "64",
            "--llm-layers", "1", "--llm-heads", "2", "--steps", "2", "--batch-size", "2", "--warmup", "1", "--val-fraction", "0"]
    subprocess.run([sys.executable, str(script), "train", "--data", str(tmp_path / "shard-00.npz"), "--out", str(tmp_path / "ckpt"),
                    "--device", "cpu", "--snapshot-at", "1", *tiny], check=True)
    with h5py.File(outcome.path, "r") as handle:
        actions = handle["data/demo_0/actions"][:]
    kept = actions[~noop_mask(actions)]
    for folder in (tmp_path / "ckpt", tmp_path / "ckpt-step1"):
        norm_stats = json.loads((folder / "config.json").read_text(encoding="utf-8"))["norm_stats"]
        assert set(norm_stats) == {"libero_object", "bridge_orig"}
        action = norm_stats["libero_object"]["action"]
        np.testing.assert_allclose(action["q01"], np.quantile(kept, 0.01, axis=0), rtol=1e-6)
        np.testing.assert_allclose(action["q99"], np.quantile(kept, 0.99, axis=0), rtol=1e-6)
        assert action["mask"] == [True] * 6 + [False]
    log = json.loads((tmp_path / "ckpt" / "training_log.json").read_text(encoding="utf-8"))
    assert log["steps"] == 2 and log["frames"] == len(kept) and log["held_out_episodes"] == []


def _file_contents(path: Path) -> dict[str, object]:
    """Every group's and dataset's attributes, and every dataset's dtype, shape, chunks, filter and
    values (as a SHA-256 of its raw bytes), by HDF5 name."""
    import hashlib

    import h5py

    contents: dict[str, object] = {}

    def note(name: str, item: object) -> None:
        attrs = {key: value.tolist() if isinstance(value, np.ndarray | np.generic) else value for key, value in item.attrs.items()}  # type: ignore[attr-defined]
        if isinstance(item, h5py.Dataset):
            values = item[()]
            contents[name] = (attrs, values.dtype.str, values.shape, item.chunks, item.compression, item.compression_opts,
                              hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest())
        else:
            contents[name] = attrs

    with h5py.File(path, "r") as handle:
        note("/", handle)
        handle.visititems(note)
    return contents


def test_a_demo_recorded_on_a_ray_environment_actor_equals_the_one_recorded_here(recorded, ray_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``--workers 2``: the same spec recorded on a Ray environment actor (the rollout's
    ``EnvWorker``) gives the same file, dataset for dataset and attribute for attribute."""
    from vla_spec.demos import DemoSpec, record_demos
    from vla_spec.sim.env import clear_env_cache

    out, outcome = recorded
    clear_env_cache()  # one LIBERO process at a time: this process's environment goes before the actor builds its own
    (on_ray,) = record_demos([DemoSpec(*SPEC_ARGS)], tmp_path, workers=2, progress=False)
    assert on_ray.path == tmp_path / "libero_object" / "task00_seed00007.hdf5"
    assert (on_ray.steps, on_ray.skipped) == (outcome.steps, False)
    here, there = _file_contents(outcome.path), _file_contents(on_ray.path)
    assert set(here) == {"/", "data", "data/demo_0", "data/demo_0/obs", "data/demo_0/obs/agentview_rgb", "data/demo_0/actions",
                         "data/demo_0/states", "data/demo_0/robot_states", "data/demo_0/rewards", "data/demo_0/dones"}
    assert there == here

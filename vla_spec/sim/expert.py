"""A scripted pick-and-place expert that reads privileged simulator state.

It exists to prove the simulator loop and the action path work before any model is involved: a
positive control (it must succeed) and, with one knob of its action path changed, the negative
controls (it must fail). Its commands go through OpenVLA's real action path
(:class:`TokenizedActionPath`, both ways of :class:`vla_spec.actions.LiberoOutputs`): command ->
training gripper convention -> ``normalize`` with the suite's statistics -> 7 tokens -> decode ->
``unnormalize`` -> ``policy_to_env``; the environment only ever sees the decoded command.

Supported goals: conjunctions of ``('in' | 'on', obj, target)`` where ``obj`` is a movable object
and ``target`` an object or a site region (all of libero_object and libero_spatial; the
pick-and-place tasks of libero_goal and libero_10). Other predicates (open/close/turnon) raise
:class:`UnsupportedTask` in ``reset`` (an episode error, hence a failure).

Script per sub-goal: above the grasp point -> descend -> close -> lift -> over the target ->
lower -> open -> retreat up. Positions are metres in the world frame (z up; the Panda starts
gripper-down with its fingers closing along world y). The gripper is held top-down (quaternion
xyzw = (1, 0, 0, 0)).

Command range (a decision): each arm dimension is limited to ``[q01, q99]`` of the suite's
statistics, the range OpenVLA's training data was normalized to (``normalize`` clips outside it,
so a larger command would silently saturate and lose its resolution). E.g. libero_object allows
x in [-0.538, 0.846], about 0.006-0.009 m per step at steady state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_spec.actions import ActionProcessor, LiberoOutputs
from vla_spec.gripper import ENV_CLOSE, ENV_OPEN
from vla_spec.normalization import UnnormKeyError, shipped_norm_stats
from vla_spec.sim import PolicySetupError
from vla_spec.sim.interface import Observation, PolicyStep, TaskContext
from vla_spec.sim.suites import base_suite

#: Controller gain: command units per metre of position error (1.0 commands 0.05 m).
POSITION_GAIN = 15.0
#: Orientation gain: command units per radian of orientation error (1.0 commands 0.5 rad).
ROTATION_GAIN = 1.0
#: Target top-down orientation of the end effector, quaternion xyzw (robosuite convention).
TOP_DOWN_QUAT = np.array([1.0, 0.0, 0.0, 0.0])
GRIPPER_HALF_OPENING = 0.035  # m: objects with a y half-width below this are grasped across
APPROACH_HEIGHT = 0.08  # m above the grasp point before descending
LIFT_HEIGHT = 0.06  # m: the carried object rises at least this much above where it was grasped
CLEARANCE = 0.06  # m between the carried object's bottom and the target's top while carrying
CLOSE_STEPS = 12
OPEN_STEPS = 10
POSITION_TOLERANCE = 0.008  # m
STALL_STEPS = 60  # leave a move phase after this many steps even if the tolerance is not met


class UnsupportedTask(ValueError):
    """The task's goal is not a pick-and-place the expert knows how to script."""


@dataclass(frozen=True)
class TokenizedActionPath:
    """Environment command -> tokens -> environment command, through OpenVLA's real action path.

    ``encoder`` holds the suite's statistics; ``decoder`` the ``unnorm_key``'s and ``invert_gripper``:
    with the defaults the round trip only quantizes; the negative controls change exactly one knob.
    """

    encoder: LiberoOutputs
    decoder: LiberoOutputs

    @classmethod
    def for_suite(cls, suite: str, *, unnorm_key: str | None = None, invert_gripper: bool = True) -> "TokenizedActionPath":
        """Encode with ``suite``'s shipped stats; decode with ``unnorm_key``'s (default: the suite's).
        Raises :class:`PolicySetupError` naming ``suite`` or ``unnorm_key`` when one has no shipped
        statistics."""
        stats = shipped_norm_stats()
        suite = base_suite(suite)  # a LIBERO-PRO perturbed suite uses its base suite's statistics
        try:
            encoder = LiberoOutputs(ActionProcessor.select(stats, suite))
        except UnnormKeyError:
            known = ", ".join(sorted(stats))
            raise PolicySetupError("suite", f"the expert encodes with the suite's statistics; none are shipped for {suite} ({known})") from None
        try:
            decoder = LiberoOutputs(ActionProcessor.select(stats, unnorm_key or suite), invert_gripper=invert_gripper)
        except UnnormKeyError as error:
            raise PolicySetupError("unnorm_key", str(error)) from None
        return cls(encoder, decoder)

    def __call__(self, env_command: np.ndarray) -> PolicyStep:
        tokens = self.encoder.tokens(env_command)
        return PolicyStep(action=self.decoder(tokens), tokens=tokens)


@dataclass(frozen=True)
class Box:
    """World-frame axis-aligned bounding box (metres)."""

    low: np.ndarray
    high: np.ndarray

    @property
    def center(self) -> np.ndarray:
        return (self.low + self.high) / 2.0

    @property
    def half(self) -> np.ndarray:
        return (self.high - self.low) / 2.0


def _quat_conjugate(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])


def _quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def rotation_error(current_xyzw: np.ndarray, target_xyzw: np.ndarray) -> np.ndarray:
    """Axis-angle vector (radians, world frame) that rotates ``current`` onto ``target``."""
    q = _quat_multiply(target_xyzw, _quat_conjugate(current_xyzw))
    if q[3] < 0:
        q = -q
    sin_half = np.linalg.norm(q[:3])
    if sin_half < 1e-12:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(sin_half, q[3])
    return q[:3] / sin_half * angle


class Scene:
    """Read-only privileged views of a LIBERO environment (``ControlEnv``) in world coordinates."""

    def __init__(self, env: Any) -> None:
        self.task_env = env.env
        self.model = self.task_env.sim.model._model
        self.data = self.task_env.sim.data._data

    def is_object(self, name: str) -> bool:
        return name in self.task_env.obj_body_id

    def is_movable(self, name: str) -> bool:
        return name in self.task_env.objects_dict

    def is_site(self, name: str) -> bool:
        return name in self.task_env.object_sites_dict

    def body_pos(self, name: str) -> np.ndarray:
        return np.array(self.data.xpos[self.task_env.obj_body_id[name]])

    def geom_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """World AABBs (low, high), shape (ngeom, 3) each, of every geom (from ``geom_aabb``)."""
        rotation = self.data.geom_xmat.reshape(-1, 3, 3)
        center = self.data.geom_xpos + np.einsum("nij,nj->ni", rotation, self.model.geom_aabb[:, :3])
        half = np.einsum("nij,nj->ni", np.abs(rotation), self.model.geom_aabb[:, 3:])
        return center - half, center + half

    def collision_geoms(self) -> np.ndarray:
        """Boolean mask of geoms that collide (contype or conaffinity set; visual geoms do not)."""
        return (self.model.geom_contype != 0) | (self.model.geom_conaffinity != 0)

    def geoms_of(self, name: str) -> np.ndarray:
        """Boolean mask of the collision geoms of object ``name`` (the subtree of its root body)."""
        root = self.task_env.obj_body_id[name]
        return (self.model.body_rootid[self.model.geom_bodyid] == root) & self.collision_geoms()

    def gripper_geoms(self) -> np.ndarray:
        """Boolean mask of the gripper's collision geoms (bodies named ``gripper0_*``)."""
        names = [self.task_env.sim.model.body_id2name(int(b)) or "" for b in self.model.geom_bodyid]
        return np.array([n.startswith("gripper0_") for n in names]) & self.collision_geoms()

    def object_box(self, name: str) -> Box:
        """Bounding box of the object's collision geoms."""
        mask = self.geoms_of(name)
        if not mask.any():
            raise UnsupportedTask(f"object {name!r} has no collision geoms to grasp")
        low, high = self.geom_boxes()
        return Box(low[mask].min(axis=0), high[mask].max(axis=0))

    def site_box(self, name: str) -> Box:
        """The region box LIBERO's ``in_box`` tests (half size ``|R size|``, low z extended 0.01)."""
        site = self.task_env.object_sites_dict[name]
        position = np.array(self.task_env.sim.data.get_site_xpos(name))
        rotation = np.array(self.task_env.sim.data.get_site_xmat(name))
        half = np.abs(rotation @ np.asarray(site.size, dtype=float))
        low = position - half
        low[2] -= 0.01
        return Box(low, position + half)


@dataclass(frozen=True)
class PickPlace:
    """One sub-goal: move ``obj`` ``relation`` ('in' | 'on') ``target``."""

    relation: str
    obj: str
    target: str


def pick_place_goals(env: Any) -> list[PickPlace]:
    """The task's goal as pick-and-place sub-goals, or :class:`UnsupportedTask`."""
    scene = Scene(env)
    goals = []
    for predicate in env.env.parsed_problem["goal_state"]:
        relation = predicate[0].lower()
        if relation not in ("in", "on") or len(predicate) != 3:
            raise UnsupportedTask(f"goal predicate {predicate} is not pick-and-place")
        _, obj, target = predicate
        if not scene.is_movable(obj):
            raise UnsupportedTask(f"{obj!r} in {predicate} is not a movable object")
        if not (scene.is_object(target) or scene.is_site(target)):
            raise UnsupportedTask(f"target {target!r} of {predicate} is neither an object nor a region")
        goals.append(PickPlace(relation, obj, target))
    return goals


class PickPlaceExpert:
    """Scripted privileged expert; a :class:`vla_spec.sim.interface.Policy` needing no camera.

    At each ``reset`` it builds its action path for the episode's suite
    (:meth:`TokenizedActionPath.for_suite`): encode with the suite's statistics, decode with
    ``unnorm_key`` (default: the suite's) and ``invert_gripper``. The negative controls are this
    expert with ``unnorm_key="bridge_orig"`` or ``invert_gripper=False``; nothing else changes.
    Picklable and cheap to build, so ``functools.partial(PickPlaceExpert, ...)`` can be handed to
    worker processes.
    """

    needs_camera = False

    def __init__(self, *, unnorm_key: str | None = None, invert_gripper: bool = True) -> None:
        self.unnorm_key = unnorm_key
        self.invert_gripper = invert_gripper
        self.path: TokenizedActionPath | None = None
        self.command_low = np.zeros(6)
        self.command_high = np.zeros(6)
        self._scene: Scene | None = None
        self._goals: list[PickPlace] = []
        self._phase = "done"
        self._phase_steps = 0
        self._gripper = ENV_OPEN
        self._grasp_offset = np.zeros(3)
        self._grasp_center_z = 0.0
        self._grasp: np.ndarray | None = None
        self._gripper_low = np.zeros(3)
        self._gripper_high = np.zeros(3)

    def check_setup(self, suites: Sequence[str]) -> dict[str, Any]:
        """Build each suite's action path as ``reset`` does (:meth:`TokenizedActionPath.for_suite`):
        raises :class:`PolicySetupError` when a suite or the ``unnorm_key`` has no shipped
        statistics (the action path needs both); return what the log header records."""
        paths = {suite: self._action_path(suite) for suite in suites}
        return {"unnorm_key": {suite: path.decoder.processor.unnorm_key for suite, path in paths.items()}, "invert_gripper": self.invert_gripper}

    def _action_path(self, suite: str) -> TokenizedActionPath:
        return TokenizedActionPath.for_suite(suite, unnorm_key=self.unnorm_key, invert_gripper=self.invert_gripper)

    # -- Policy protocol -------------------------------------------------------------------------
    def reset(self, task: TaskContext) -> None:
        if task.env is None:
            raise UnsupportedTask("the scripted expert needs the privileged env in TaskContext.env")
        self.path = self._action_path(task.suite)
        stats = self.path.encoder.processor.stats
        self.command_low = np.asarray(stats.q01[:6], dtype=float)
        self.command_high = np.asarray(stats.q99[:6], dtype=float)
        self._scene = Scene(task.env)
        self._goals = pick_place_goals(task.env)
        # the open gripper's collision footprint relative to the end effector (top-down at reset)
        low, high = self._scene.geom_boxes()
        mask = self._scene.gripper_geoms()
        eef = np.array(task.env.env.sim.data.get_site_xpos("gripper0_grip_site"))
        self._gripper_low = low[mask].min(axis=0) - eef
        self._gripper_high = high[mask].max(axis=0) - eef
        self._grasp: np.ndarray | None = None
        self._gripper = ENV_OPEN
        self._set_phase("approach")

    def act(self, obs: Observation) -> PolicyStep:
        if self.path is None:
            raise RuntimeError("PickPlaceExpert.act before reset")
        eef = np.asarray(obs.raw["robot0_eef_pos"], dtype=float)
        quat = np.asarray(obs.raw["robot0_eef_quat"], dtype=float)
        target = self._plan(eef)
        self._phase_steps += 1
        return self.path(self.command(eef, quat, target))

    def command(self, eef: np.ndarray, quat: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Environment command toward ``target``: P control, top-down orientation, stats range."""
        command = np.zeros(7)
        command[:3] = POSITION_GAIN * (target - eef)
        command[3:6] = ROTATION_GAIN * rotation_error(quat, TOP_DOWN_QUAT) / 0.5
        command[:6] = np.clip(command[:6], self.command_low, self.command_high)
        command[6] = self._gripper
        return command

    # -- the script ------------------------------------------------------------------------------
    def _set_phase(self, phase: str) -> None:
        self._phase = phase
        self._phase_steps = 0

    def _grasp_candidates(self, box: Box) -> list[np.ndarray]:
        """Grasp points for an object's box, preferred first (the fingers close along world y)."""
        height = box.high[2] - box.low[2]
        if box.half[1] > GRIPPER_HALF_OPENING:
            # Too wide to grasp across: pinch a wall (the rim) on the -y or +y side, the side facing
            # the robot's y = 0 line first, with the fingers straddling it.
            z = box.high[2] - min(0.02, height / 2)
            first = -1.0 if box.center[1] > 0 else 1.0
            sides = (first, -first)
            return [np.array([box.center[0], box.center[1] + side * (box.half[1] - 0.012), z]) for side in sides]
        z = max(box.high[2] - 0.03, box.low[2] + height / 2)
        reach = max(box.half[0] - 0.015, 0.0)
        shifts = (0.0, -reach / 2, reach / 2, -reach, reach) if reach > 0 else (0.0,)
        return [np.array([box.center[0] + dx, box.center[1], z]) for dx in shifts]

    def _choose_grasp(self, obj: str) -> np.ndarray:
        """The candidate grasp whose gripper footprint overlaps other geoms least (ties: preferred)."""
        scene = self._scene
        low, high = scene.geom_boxes()
        others = scene.collision_geoms() & ~scene.geoms_of(obj) & ~scene.gripper_geoms()
        others &= high[:, 2] > scene.object_box(obj).low[2] + 0.005  # the table top is no obstacle
        low, high = low[others], high[others]
        best, best_overlap = None, np.inf
        for point in self._grasp_candidates(scene.object_box(obj)):
            g_low, g_high = point + self._gripper_low, point + self._gripper_high
            extent = np.clip(np.minimum(high, g_high) - np.maximum(low, g_low), 0.0, None)
            overlap = float(np.prod(extent, axis=1).sum())
            if overlap < best_overlap - 1e-9:
                best, best_overlap = point, overlap
        return best

    def _place_point(self, goal: PickPlace, held: Box) -> np.ndarray:
        """Where the held object's bounding-box centre should be when released."""
        scene = self._scene
        if scene.is_site(goal.target) and goal.relation == "in":
            region = scene.site_box(goal.target)
            center = region.center.copy()
            center[2] = max(region.center[2], region.low[2] + held.half[2] + 0.01)
            return center
        if scene.is_site(goal.target):  # "on" a region: rest on its top face (LIBERO's ``under``)
            region = scene.site_box(goal.target)
            center = region.center.copy()
            center[2] = region.high[2] + held.half[2] + 0.01
            return center
        support = scene.object_box(goal.target)
        center = support.center.copy()
        center[:2] = scene.body_pos(goal.target)[:2]
        center[2] = support.high[2] + held.half[2] + 0.01 if goal.relation == "on" else support.low[2] + held.half[2] + 0.02
        return center

    def _moved(self, eef: np.ndarray, target: np.ndarray, tolerance: float = POSITION_TOLERANCE) -> bool:
        return bool(np.all(np.abs(target - eef) < tolerance)) or self._phase_steps >= STALL_STEPS

    def _plan(self, eef: np.ndarray) -> np.ndarray:
        """Advance the phase machine; return the end-effector target (world, metres)."""
        if not self._goals:
            self._set_phase("done")
        if self._phase == "done":
            return eef
        goal = self._goals[0]
        scene = self._scene
        if self._phase == "approach":
            if self._grasp is None:
                self._grasp = self._choose_grasp(goal.obj)
            target = self._grasp + np.array([0.0, 0.0, APPROACH_HEIGHT])
            if self._moved(eef, target, 0.012):
                self._set_phase("descend")
            return target
        if self._phase == "descend":
            target = self._grasp
            if self._moved(eef, target):
                grasped = scene.object_box(goal.obj).center
                self._grasp_offset = eef - grasped
                self._grasp_center_z = float(grasped[2])
                self._gripper = ENV_CLOSE
                self._set_phase("close")
            return target
        if self._phase == "close":
            if self._phase_steps >= CLOSE_STEPS:
                self._set_phase("lift")
            return eef
        held = scene.object_box(goal.obj)
        place = self._place_point(goal, held)
        target_box = scene.site_box(goal.target) if scene.is_site(goal.target) else scene.object_box(goal.target)
        carry_z = max(place[2], target_box.high[2] + held.half[2]) + CLEARANCE  # held box centre height
        carry_z = max(carry_z, self._grasp_center_z + LIFT_HEIGHT)
        offset = self._grasp_offset  # end effector relative to the held object's box centre
        if self._phase == "lift":
            target = np.array([eef[0], eef[1], carry_z + offset[2]])
            if self._moved(eef, target, 0.015):
                self._set_phase("carry")
            return target
        if self._phase == "carry":
            target = np.array([place[0] + offset[0], place[1] + offset[1], carry_z + offset[2]])
            if self._moved(eef, target, 0.01):
                self._set_phase("lower")
            return target
        if self._phase == "lower":
            target = place + offset
            if self._moved(eef, target, 0.01):
                self._gripper = ENV_OPEN
                self._set_phase("release")
            return target
        if self._phase == "release":
            if self._phase_steps >= OPEN_STEPS:
                self._set_phase("retreat")
            return eef
        if self._phase == "retreat":
            target = eef + np.array([0.0, 0.0, 0.05])
            if self._phase_steps >= 8:
                self._goals = self._goals[1:]
                self._grasp = None
                self._set_phase("approach" if self._goals else "done")
            return target
        raise AssertionError(f"unknown phase {self._phase}")

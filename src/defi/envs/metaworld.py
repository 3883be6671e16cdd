"""Meta-World v3 behind one small wrapper: the data generator and the closed-loop evaluation both use it.

`MetaWorldEnv(task, seed)` builds the goal-observable v3 environment of `task`, re-draws object and goal
positions from its own seeded generator at every `reset` (Meta-World freezes them after construction unless told
otherwise), renders any number of cameras headless and fast, and returns observations in the Policy API's key
format:

    "observation.images.<camera>": uint8 [h, w, 3]  (HWC, the right way up)
    "observation.state":           float32 [4]      (end-effector xyz and gripper opening, as LeRobot's wrapper)
    "observation.environment_state": float32 [39]   (Meta-World's full flat observation, for scripted experts)

Rendering goes straight through `mujoco.Renderer` (one per image size) rather than gymnasium's renderer so
that several cameras can share one GL context. At 64x64 on a software GL (llvmpipe) the fixed cost per frame
dominates, so the options that cost time and add nothing at that size are turned off: multisampling
(`model.vis.quality.offsamples = 0`) and shadows, reflections and the skybox (scene flags that
`update_scene` resets, so they are cleared after each update). The `corner*` cameras of the Sawyer scene look
at the table upside down; their images are rotated by 180 degrees (`img[::-1, ::-1]`), as LeRobot does.
Besides the model's cameras, `FREE_CAMERAS` names poses of MuJoCo's free camera ("workspace_close",
"workspace": closer views of where objects and goals are placed, so that their positions are visible at 64x64;
see benchmarks/check_visibility.py).

What is left is vertex work: llvmpipe shades every vertex on the calling thread, and the Sawyer arm's ten
meshes (~63k of the scene's ~67k mesh triangles) take ~80% of a 64x64 frame. `mesh_detail < 1` (opt-in: it
changes pixels at the arm's edges, mean absolute difference 1.6/255 at 0.25, 2.7/255 at 0.1) renders
quadric-simplified copies of the large meshes instead (`fast_simplification`); physics keeps the original
model. See benchmarks/bench_data_generation.py for the measured times and differences.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import warnings  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from defi.errors import DefiError  # noqa: E402

MT10: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
CAMERAS: tuple[str, ...] = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")


@dataclass(frozen=True)
class FreeCamera:
    """A camera pose that the Sawyer scene does not define: MuJoCo's free camera, which orbits `lookat`.

    `azimuth` and `elevation` are in degrees (elevation < 0 looks down; azimuth 0 looks along +x, 90 along +y),
    `distance` in metres from `lookat`, `fovy` the vertical field of view in degrees. Images are the right way up.
    """

    lookat: tuple[float, float, float]
    distance: float
    azimuth: float
    elevation: float
    fovy: float = 45.0


# Named views beyond the model's cameras. The model's cameras frame the whole table and robot, so at 64x64 the
# objects and goal markers whose positions change between scenes cover a handful of pixels and a policy cannot
# tell scenes apart (issue 13; benchmarks/check_visibility.py measures it). Both views look down at 45 degrees
# at the region where Meta-World places objects and goals, from above the table's far-left corner as the robot
# sees it (away from the robot, so the arm, at the top of the image, does not cover the table); a frame costs no
# more to render than `corner`'s. "workspace_close" (camera at x -0.43, y 1.12, z 0.70, looking at (0, 0.7, 0.1))
# shows the randomised objects and goals of a 64x64 image on ~4x the pixels of `corner` (push, pick-place,
# reach: 45-53 pixels differ between scenes against 12-13); "workspace", 0.25 m further back, ~2.5x, with more of
# the table in view.
FREE_CAMERAS: dict[str, FreeCamera] = {
    "workspace": FreeCamera(lookat=(0.0, 0.68, 0.08), distance=1.1, azimuth=-45.0, elevation=-45.0),
    "workspace_close": FreeCamera(lookat=(0.0, 0.7, 0.1), distance=0.85, azimuth=-45.0, elevation=-45.0),
}
ACTION_DIM = 4
STATE_DIM = 4
ENV_STATE_DIM = 39
EMBODIMENT = "sawyer"
# Meshes with fewer triangles than this are drawn as they are under `mesh_detail < 1`: they are cheap, and
# simplifying the small ones (the table's 308 triangles) visibly changes their outline.
SIMPLIFY_MIN_FACES = 1000


def all_tasks() -> tuple[str, ...]:
    """The 50 Meta-World v3 task names (MT50), in Meta-World's order."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return tuple(ALL_V3_ENVIRONMENTS.keys())


MT50_NAME = "MT50"


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """Task names from "MT10", "MT50", or names (comma-separated or a list; the "-v3" suffix is optional).

    An unknown name raises `DefiError` listing the valid ones.
    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if not items:
        raise DefiError("tasks: expected MT10, MT50 or Meta-World task names, got nothing")
    valid = all_tasks()
    out: list[str] = []
    for item in items:
        if item.upper() == "MT10":
            names: Sequence[str] = MT10
        elif item.upper() == MT50_NAME:
            names = valid
        else:
            name = item if item.endswith("-v3") else f"{item}-v3"
            if name not in valid:
                raise DefiError(
                    f"unknown Meta-World task {item!r}; valid: MT10, MT50, " + ", ".join(t[:-3] for t in valid)
                )
            names = [name]
        out += [n for n in names if n not in out]
    return out


def task_label(task: str) -> str:
    """A task's name without the version suffix, e.g. "pick-place"."""
    return task[:-3] if task.endswith("-v3") else task


class MetaWorldEnv:
    """One Meta-World v3 task with seeded random object/goal positions, cameras and its scripted expert."""

    def __init__(
        self,
        task: str,
        seed: int = 0,
        cameras: Sequence[str] = ("corner",),
        image_size: int | tuple[int, int] = 64,
        max_episode_steps: int | None = None,
        mesh_detail: float = 1.0,
        free_cameras: Mapping[str, FreeCamera] | None = None,
    ) -> None:
        """`cameras` name the model's cameras (`CAMERAS`), the named views of `FREE_CAMERAS`, or those of
        `free_cameras` (extra named poses for this environment only, e.g. candidates being measured)."""
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        from metaworld.policies import ENV_POLICY_MAP

        (self.task,) = resolve_tasks([task])
        self._free_cameras = {**FREE_CAMERAS, **dict(free_cameras or {})}
        for cam in cameras:
            if cam not in CAMERAS and cam not in self._free_cameras:
                raise DefiError(f"unknown Meta-World camera {cam!r}; valid: "
                                + ", ".join((*CAMERAS, *self._free_cameras)))
        self.cameras = tuple(cameras)
        self.height, self.width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if not 0.0 < mesh_detail <= 1.0:
            raise DefiError(f"mesh_detail: expected a fraction in (0, 1], got {mesh_detail}")
        self.mesh_detail = float(mesh_detail)
        self._mujoco = mujoco
        self._env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{self.task}-goal-observable"](seed=seed)
        # Meta-World freezes positions after construction; draw new ones at each reset from the seeded generator.
        self._env._freeze_rand_vec = False
        self._env.seeded_rand_vec = True
        self._env.seed(seed)
        self.max_episode_steps = int(max_episode_steps or self._env.max_path_length)
        self.fps = float(round(1.0 / self._env.dt))
        self._expert = ENV_POLICY_MAP[self.task]()
        self._renderer = None
        if self.cameras:
            model = self._env.model
            model.vis.quality.offsamples = 0
            # The offscreen buffer only needs to hold the largest image rendered.
            model.vis.global_.offwidth = max(self.width, 1)
            model.vis.global_.offheight = max(self.height, 1)
            self._renderer_key = (self.task, self.height, self.width, self.mesh_detail)
            self._renderer = _acquire_renderer(self._renderer_key, model)
            # The scene is always built from the physics model (Meta-World moves bodies and sites in it at reset);
            # only the GL context's meshes come from `render_model`.
            self._scene_option = mujoco.MjvOption()
            self._camera = mujoco.MjvCamera()
            self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
            self._camera_ids = {cam: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam)
                                for cam in self.cameras if cam in CAMERAS}
            self._free_camera = mujoco.MjvCamera()
            self._free_camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        self._raw_obs: np.ndarray | None = None
        self.steps = 0
        self.success = False

    # -- episode ---------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Start an episode; `seed` re-seeds the position generator (the same seed gives the same scene)."""
        if seed is not None:
            self._env.seed(int(seed))
        self._raw_obs, _ = self._env.reset()
        # Meta-World moves the goal sites at reset without recomputing their drawn positions (the next physics
        # step does): without this pass the first frame shows the previous episode's goal. Kinematics only, so
        # the simulation itself is unchanged.
        self._mujoco.mj_kinematics(self._env.model, self._env.data)
        self.steps = 0
        self.success = False
        return self.observation()

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict[str, np.ndarray], float, bool, dict[str, Any]]:
        """Apply a 4-dim action in [-1, 1]; returns (observation, reward, done, info).

        `render=False` leaves the camera images out of the observation (rendering is most of a step's cost; a
        receding-horizon evaluation only needs images when it asks the policy again).

        `done` is True once `max_episode_steps` steps were taken; `info["success"]` is this step's success flag
        and `self.success` whether the episode has succeeded at any step (Meta-World's success criterion).
        """
        if self._raw_obs is None:
            raise RuntimeError("call reset() before step()")
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(ACTION_DIM), -1.0, 1.0)
        self._raw_obs, reward, _, _, info = self._env.step(action)
        self.steps += 1
        info = dict(info)
        info["success"] = bool(info.get("success", 0.0))
        self.success = self.success or info["success"]
        done = self.steps >= self.max_episode_steps
        return self.observation(render=render), float(reward), done, info

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state (float32 [4], clipped to [-1, 1])."""
        if self._raw_obs is None:
            raise RuntimeError("call reset() before expert_action()")
        with warnings.catch_warnings():
            # The scripted experts warn on every large correction; the action is clipped to [-1, 1] anyway.
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            action = self._expert.get_action(self._raw_obs)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    # -- observations ----------------------------------------------------------------------------------------
    def observation(self, render: bool = True) -> dict[str, np.ndarray]:
        assert self._raw_obs is not None
        obs = {f"observation.images.{cam}": img for cam, img in self.render().items()} if render else {}
        obs["observation.state"] = self._raw_obs[:STATE_DIM].astype(np.float32)
        obs["observation.environment_state"] = self._raw_obs.astype(np.float32)
        return obs

    def render(self) -> dict[str, np.ndarray]:
        """uint8 [h, w, 3] per camera, the right way up."""
        if self._renderer is None:
            return {}
        mujoco = self._mujoco
        flags = mujoco.mjtRndFlag
        scene = self._renderer.scene
        images = {}
        model = self._env.model
        for cam in self.cameras:
            if cam in self._camera_ids:
                camera = self._camera
                camera.fixedcamid = self._camera_ids[cam]
            else:
                camera, pose = self._free_camera, self._free_cameras[cam]
                camera.lookat[:] = pose.lookat
                camera.distance, camera.azimuth, camera.elevation = pose.distance, pose.azimuth, pose.elevation
                # A free camera's field of view is the model's global one (the fixed cameras have their own).
                model.vis.global_.fovy = pose.fovy
            mujoco.mjv_updateScene(model, self._env.data, self._scene_option, None, camera,
                                   mujoco.mjtCatBit.mjCAT_ALL, scene)
            scene_flags = scene.flags
            scene_flags[flags.mjRND_SHADOW] = 0
            scene_flags[flags.mjRND_REFLECTION] = 0
            scene_flags[flags.mjRND_SKYBOX] = 0
            img = self._renderer.render()
            images[cam] = np.ascontiguousarray(img[::-1, ::-1]) if cam.startswith("corner") else img
        return images

    @property
    def metadata(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "cameras": list(self.cameras),
            "image_size": [self.height, self.width],
            "fps": self.fps,
            "action_dim": ACTION_DIM,
            "state_dim": STATE_DIM,
            "max_episode_steps": self.max_episode_steps,
            "embodiment": EMBODIMENT,
        }

    def close(self) -> None:
        if self._renderer is not None:
            _release_renderer(self._renderer_key)
            self._renderer = None
        self._env.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Environments of one task in one process share a renderer: its GL context holds only the task's meshes and
# textures (the scene is built from each environment's own physics model at every frame), and creating one costs
# 0.4-0.6 s on a software GL, more than a 64x64 episode's rendering; batched evaluation keeps many environments of a
# task alive at once. Reference-counted so that closing the last environment of a task frees the context.
_RENDERERS: dict[tuple, list] = {}


def _acquire_renderer(key: tuple, model: Any) -> Any:
    import mujoco

    entry = _RENDERERS.get(key)
    if entry is None:
        _task, height, width, mesh_detail = key
        render_model = model if mesh_detail >= 1.0 else simplified_render_model(model, mesh_detail)
        entry = _RENDERERS[key] = [mujoco.Renderer(render_model, height, width), 0]
    entry[1] += 1
    return entry[0]


def _release_renderer(key: tuple) -> None:
    entry = _RENDERERS.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        entry[0].close()
        del _RENDERERS[key]


def simplified_render_model(model: Any, keep: float, min_faces: int = SIMPLIFY_MIN_FACES) -> Any:
    """A copy of `model` whose meshes of >= `min_faces` triangles keep about `keep` of them (for drawing only).

    Quadric simplification (`fast_simplification`) with smooth area-weighted vertex normals, which reproduce
    MuJoCo's own normals of these meshes (mean absolute pixel difference 0.07/255 without simplification).
    The copy keeps every array size; only the mesh counts shrink, so it must not be used for physics.
    """
    import copy

    try:
        import fast_simplification
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise DefiError("mesh_detail < 1 needs the fast-simplification package "
                        "(pip install fast-simplification)") from exc

    out = copy.deepcopy(model)
    for mesh in range(model.nmesh):
        faces_n = int(model.mesh_facenum[mesh])
        if faces_n < min_faces or model.mesh_texcoordadr[mesh] != -1:
            continue  # small meshes are cheap; textured ones would need their texture coordinates remapped
        vert_adr, vert_n = int(model.mesh_vertadr[mesh]), int(model.mesh_vertnum[mesh])
        face_adr, normal_adr = int(model.mesh_faceadr[mesh]), int(model.mesh_normaladr[mesh])
        verts = np.asarray(model.mesh_vert[vert_adr:vert_adr + vert_n], dtype=np.float32)
        faces = np.asarray(model.mesh_face[face_adr:face_adr + faces_n])
        new_verts, new_faces = fast_simplification.simplify(verts, faces, target_reduction=1.0 - keep)
        if len(new_verts) > min(vert_n, int(model.mesh_normalnum[mesh])) or len(new_faces) > faces_n:
            continue
        face_normals = np.cross(new_verts[new_faces[:, 1]] - new_verts[new_faces[:, 0]],
                                new_verts[new_faces[:, 2]] - new_verts[new_faces[:, 0]])
        normals = np.zeros_like(new_verts)
        for corner in range(3):
            np.add.at(normals, new_faces[:, corner], face_normals)
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        out.mesh_vert[vert_adr:vert_adr + len(new_verts)] = new_verts
        out.mesh_vertnum[mesh] = len(new_verts)
        out.mesh_face[face_adr:face_adr + len(new_faces)] = new_faces
        out.mesh_facenormal[face_adr:face_adr + len(new_faces)] = new_faces
        out.mesh_facenum[mesh] = len(new_faces)
        out.mesh_normal[normal_adr:normal_adr + len(new_verts)] = normals
        out.mesh_normalnum[mesh] = len(new_verts)
    return out

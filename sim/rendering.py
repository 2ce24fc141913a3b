"""Camera images for the MuJoCo suites (RoboMimic/robosuite, LIBERO, Meta-World, the ROS
simulated Franka), as fast as a CPU renderer allows at policy resolutions.

On Mesa llvmpipe (no GPU) a frame's cost is nearly independent of its size at 84x84: it is
fixed work per frame, and most of it is MuJoCo's default look: the 4096x4096 shadow map
redrawn for every light, 4x multisampling, planar reflections and the skybox
(docs/rendering.md has the measured breakdown). A ``RenderQuality`` names such a look:

* ``fast`` (the default): no multisampling, no shadows, no reflections (the skybox stays: it
  costs nothing measurable), and the offscreen buffer sized to the cameras instead of the
  model's 640x480;
* ``default``: the model's own visual settings, the look of earlier datasets.

``MujocoCameraRenderer`` draws all cameras of one step in one pass: one GL context per
process reused across cameras, the cameras side by side in one offscreen buffer, and one
pixel read-back for all of them. Images come out upright (top row first).

A policy sees what it was trained on: the quality is stored with every dataset (sim/collect.py)
and checkpoint, and evaluation warns on a mismatch.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vla.registry import UnknownNameError, unknown_name_message

# Per mesh. robosuite's Panda draws 168k triangles per camera frame (its pedestal alone 33k),
# a LIBERO bowl 43k;
# at 84x84 a link covers a few hundred pixels, and 500 triangles per mesh changes the mean pixel
# by about 1/255 (docs/rendering.md) while the vertex work of llvmpipe drops ~8x.
FAST_MAX_MESH_FACES = 500


@dataclass(frozen=True)
class RenderQuality:
    """One look of a MuJoCo camera image; ``None`` keeps the model's own setting."""

    name: str
    description: str
    multisamples: int | None = None
    shadow_map_size: int | None = None
    shadows: bool = True
    reflections: bool = True
    skybox: bool = True
    buffer_fits_cameras: bool = False  # the offscreen buffer just holds the cameras of one pass
    max_mesh_faces: int | None = None  # untextured meshes above this are simplified for drawing


RENDER_QUALITIES: dict[str, RenderQuality] = {
    q.name: q
    for q in (
        RenderQuality(
            "fast",
            "no multisampling, shadows or reflections; buffer sized to the cameras; meshes simplified "
            f"to about {FAST_MAX_MESH_FACES} triangles",
            multisamples=0,
            shadow_map_size=1,
            shadows=False,
            reflections=False,
            buffer_fits_cameras=True,
            max_mesh_faces=FAST_MAX_MESH_FACES,
        ),
        RenderQuality("default", "the model's own visual settings (4x multisampling, 4096 shadow map, reflections)"),
    )
}
DEFAULT_RENDER_QUALITY = "fast"


def render_quality(name: str) -> RenderQuality:
    """The named quality; an unknown name lists those that exist."""
    if name not in RENDER_QUALITIES:
        raise UnknownNameError(unknown_name_message("render quality", name, list(RENDER_QUALITIES)))
    return RENDER_QUALITIES[name]


class MujocoCameraRenderer:
    """Renders named cameras of one ``mujoco.MjModel`` at ``(height, width)``.

    The model's visual settings are changed only while the GL context is created (MuJoCo
    reads them then), so other renderers of the same model (robosuite's own) keep theirs.
    """

    def __init__(
        self,
        model,
        height: int,
        width: int,
        cameras: Sequence[str],
        quality: str = DEFAULT_RENDER_QUALITY,
        hidden_geom_groups: Sequence[int] = (),
    ):
        import mujoco

        self.quality = render_quality(quality)
        self.height, self.width = int(height), int(width)
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        unknown = [c for c in cameras if c not in names]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; the model has: {', '.join(n for n in names if n)}")
        if not cameras:
            raise ValueError("MujocoCameraRenderer needs at least one camera")
        self.cameras = tuple(dict.fromkeys(cameras))
        self._camera_ids = {name: names.index(name) for name in self.cameras}
        self._model = model
        buffer = (len(self.cameras) * self.width, self.height)

        visual, quality_settings = model.vis.global_, model.vis.quality
        saved = (visual.offwidth, visual.offheight, quality_settings.offsamples, quality_settings.shadowsize)
        q = self.quality
        try:
            if q.buffer_fits_cameras:
                visual.offwidth, visual.offheight = buffer
            else:
                visual.offwidth, visual.offheight = max(visual.offwidth, buffer[0]), max(visual.offheight, buffer[1])
            if q.multisamples is not None:
                quality_settings.offsamples = q.multisamples
            if q.shadow_map_size is not None:
                quality_settings.shadowsize = q.shadow_map_size
            self._gl, self._owns_gl = _gl_context(visual.offwidth, visual.offheight)
            self._gl.make_current()
            drawn = model if q.max_mesh_faces is None else simplified_meshes(model, q.max_mesh_faces)
            self._context = mujoco.MjrContext(drawn, mujoco.mjtFontScale.mjFONTSCALE_150)
        finally:
            visual.offwidth, visual.offheight, quality_settings.offsamples, quality_settings.shadowsize = saved
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        self._scene = mujoco.MjvScene(model, maxgeom=10000)
        flags = mujoco.mjtRndFlag
        self._scene.flags[flags.mjRND_SHADOW] = q.shadows
        self._scene.flags[flags.mjRND_REFLECTION] = q.reflections
        self._scene.flags[flags.mjRND_SKYBOX] = q.skybox
        self._option = mujoco.MjvOption()
        for group in hidden_geom_groups:  # robosuite hides its collision geoms (group 0)
            self._option.geomgroup[group] = 0
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED

    def render(self, data, cameras: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """``{camera: (H, W, 3) uint8}`` for ``cameras`` (default: all), drawn in one pass."""
        import mujoco

        if self._context is None:
            raise RuntimeError("render() after close()")
        wanted = self.cameras if cameras is None else tuple(cameras)
        unknown = [c for c in wanted if c not in self._camera_ids]
        if unknown:
            raise ValueError(f"this renderer draws {', '.join(self.cameras)}; not {unknown}")
        self._gl.make_current()
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        for i, name in enumerate(wanted):
            self._camera.fixedcamid = self._camera_ids[name]
            mujoco.mjv_updateScene(
                self._model, data, self._option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL, self._scene
            )
            mujoco.mjr_render(mujoco.MjrRect(i * self.width, 0, self.width, self.height), self._scene, self._context)
        read = np.empty((self.height, len(wanted) * self.width, 3), dtype=np.uint8)
        mujoco.mjr_readPixels(read, None, mujoco.MjrRect(0, 0, read.shape[1], self.height), self._context)
        upright = read[::-1]  # OpenGL's first row is the bottom one
        return {
            name: np.ascontiguousarray(upright[:, i * self.width : (i + 1) * self.width])
            for i, name in enumerate(wanted)
        }

    def close(self) -> None:
        if self._context is None:
            return
        try:
            self._gl.make_current()
            self._context.free()
            if self._owns_gl:
                self._gl.free()
        except Exception:  # noqa: BLE001 - a context torn down at interpreter exit
            pass
        self._context = None


def simplified_meshes(model, max_faces: int):
    """A copy of ``model`` whose meshes have at most ~``max_faces`` triangles, for the GL
    context only: the scene is still built from ``model`` (poses, colours, sizes), and the
    context's mesh ``i`` is drawn where the scene has mesh ``i``. Quadric decimation
    (fast-simplification) after welding the duplicated vertices of OBJ exports; smooth
    normals; a textured mesh keeps one texture coordinate per welded vertex (a seam's texels
    may smear by a triangle, invisible at policy resolutions)."""
    simplified = copy.copy(model)
    for mesh in range(model.nmesh):
        faces = int(model.mesh_facenum[mesh])
        if faces <= max_faces:
            continue
        v0, nv = int(model.mesh_vertadr[mesh]), int(model.mesh_vertnum[mesh])
        f0, n0 = int(model.mesh_faceadr[mesh]), int(model.mesh_normaladr[mesh])
        t0, nt = int(model.mesh_texcoordadr[mesh]), int(model.mesh_texcoordnum[mesh])
        face_index = model.mesh_face[f0 : f0 + faces]
        uv = None
        if nt > 0:  # the texture coordinate of each vertex, from the faces' corners
            uv = np.zeros((nv, 2), dtype=np.float64)
            uv[face_index.reshape(-1)] = model.mesh_texcoord[t0 : t0 + nt][
                model.mesh_facetexcoord[f0 : f0 + faces].reshape(-1)
            ]
        points, triangles, normals, new_uv = _decimate(model.mesh_vert[v0 : v0 + nv], face_index, uv, max_faces)
        if len(points) > min(nv, int(model.mesh_normalnum[mesh])) or (uv is not None and len(points) > nt):
            continue  # not smaller after all: keep the mesh as it is
        simplified.mesh_vert[v0 : v0 + len(points)] = points
        simplified.mesh_normal[n0 : n0 + len(points)] = normals
        simplified.mesh_face[f0 : f0 + len(triangles)] = triangles
        simplified.mesh_facenormal[f0 : f0 + len(triangles)] = triangles
        if new_uv is not None:
            simplified.mesh_texcoord[t0 : t0 + len(points)] = new_uv
            simplified.mesh_facetexcoord[f0 : f0 + len(triangles)] = triangles
        simplified.mesh_facenum[mesh] = len(triangles)
    return simplified


_DECIMATED: dict[tuple, tuple] = {}


def _decimate(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None, max_faces: int):
    """(points, triangles, unit vertex normals, texture coordinates or None), cached per mesh in
    the process (the LIBERO tasks and every env of a worker share the Panda's meshes)."""
    import fast_simplification

    key = (hashlib.sha1(vertices.tobytes() + faces.tobytes()).hexdigest(), uv is not None, max_faces)
    if key not in _DECIMATED:
        welded, index = np.unique(np.round(vertices, 6), axis=0, return_inverse=True)
        index = index.reshape(-1)
        welded_faces = index[faces].astype(np.int32)
        points, triangles, collapses = fast_simplification.simplify(
            welded.astype(np.float32), welded_faces, 1.0 - max_faces / len(faces), return_collapses=True
        )
        new_uv = None
        if uv is not None:
            _, _, mapping = fast_simplification.replay_simplification(
                welded.astype(np.float32), welded_faces, collapses
            )
            welded_uv = np.zeros((len(welded), 2))
            welded_uv[index] = uv
            new_uv = np.zeros((len(points), 2))
            new_uv[np.asarray(mapping).reshape(-1)] = welded_uv
        normals = np.zeros(points.shape, dtype=np.float64)
        corners = points[triangles]
        face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        for k in range(3):
            np.add.at(normals, triangles[:, k], face_normals)
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        _DECIMATED[key] = (points, triangles, normals, new_uv)
    return _DECIMATED[key]


_SHARED_GL = threading.local()
_ALL_SHARED_GL: list = []


def _free_shared_gl_contexts() -> None:
    """Free them before EGL's own exit handler terminates the display: registered after
    mujoco.egl registered that one, so it runs first (otherwise each context's finalizer
    reports an EGL error at exit)."""
    for context in _ALL_SHARED_GL:
        try:
            context.free()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


def _gl_context(width: int, height: int):
    """(context, owned). EGL contexts are surfaceless, so one per process and thread (a GL
    context is current in one thread at a time) serves every renderer; other backends size
    theirs to the buffer."""
    from mujoco import gl_context

    if os.environ.get("MUJOCO_GL", "").lower() == "egl":
        if getattr(_SHARED_GL, "context", None) is None:
            _SHARED_GL.context = gl_context.GLContext(width, height)
            if not _ALL_SHARED_GL:
                atexit.register(_free_shared_gl_contexts)
            _ALL_SHARED_GL.append(_SHARED_GL.context)
        return _SHARED_GL.context, False
    return gl_context.GLContext(width, height), True


class EnvCameras:
    """The camera images of one MuJoCo-based env, by role ("scene", "wrist") or model camera
    name: a ``MujocoCameraRenderer`` over all the model's cameras, built on first use and
    rebuilt if the env swaps its model (a robosuite hard reset builds a new one)."""

    def __init__(
        self,
        model_and_data: Callable[[], tuple],
        roles: Mapping[str, str],
        image_size: tuple[int, int],
        quality: str = DEFAULT_RENDER_QUALITY,
        hidden_geom_groups: Sequence[int] = (),
        transforms: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
    ):
        self.quality = render_quality(quality).name
        self._model_and_data = model_and_data
        self._roles = dict(roles)
        self._size = tuple(image_size)
        self._hidden = tuple(hidden_geom_groups)
        self._transforms = dict(transforms or {})
        self._renderer: MujocoCameraRenderer | None = None
        self._model = None

    def images(self, cameras: Sequence[str]) -> dict[str, np.ndarray]:
        """``{camera: (H, W, 3) uint8}``, all drawn in one pass."""
        import mujoco

        model, data = self._model_and_data()
        if self._renderer is None or model is not self._model:
            self.close()
            names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
            height, width = self._size
            self._renderer = MujocoCameraRenderer(
                model, height, width, [n for n in names if n], self.quality, self._hidden
            )
            self._model = model
        names = [self._roles.get(c, c) for c in cameras]
        frames = self._renderer.render(data, names)
        out = {}
        for camera, name in zip(cameras, names, strict=True):
            transform = self._transforms.get(name)
            out[camera] = transform(frames[name]) if transform else frames[name]
        return out

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
            self._model = None

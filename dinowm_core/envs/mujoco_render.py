"""Headless MuJoCo rendering shared by the MuJoCo planning envs (PointMaze, Reacher, deformables).

One :class:`OffscreenRenderer` per env instance wraps a plain ``mujoco.Renderer`` with the settings that make
software (Mesa) rendering fast enough for data generation and planning:

* **GL backend.** ``MUJOCO_GL`` is read once, when ``mujoco`` is first imported, so this module must be
  imported before anything else imports ``mujoco`` (the envs import ``mujoco`` only through here). If the
  variable is unset we pick ``egl`` when an EGL device display can be initialized and ``osmesa`` otherwise.
  The check is a ctypes probe rather than a try/except around the first render because PyOpenGL fixes its
  platform at first import: once EGL has failed inside ``mujoco`` the process can no longer switch to OSMesa.
* **No shadows, reflections, skybox or multisampling.** They cost 10-20x on Mesa (platform notes:
  23-42 fps with them vs 430-840 fps without at 224 px) and carry no task information.
* **The black-frame trap.** gymnasium's MuJoCo renderer does not re-activate its GL context, so a second
  env in the same process renders black frames. ``mujoco.Renderer`` makes its own context current on
  every ``render()``, so any number of instances can coexist in one process.

Renderers are closed explicitly (``close()``) or at interpreter exit, before the EGL display is
terminated (otherwise ``mujoco``'s finalizer logs an ``EGLError`` at shutdown).

Env modules import ``mujoco`` from here (``from dinowm_core.envs.mujoco_render import OffscreenRenderer,
mujoco``) so that the backend is chosen before the first import. With several rendering processes on few cores set ``LP_NUM_THREADS=1`` (Mesa's llvmpipe thread count).
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import logging
import os
import sys
import weakref

import numpy as np

# torch's optimizers import torch._dynamo, which loads triton and the LLVM it bundles; loaded after Mesa's GL driver
# (and its own LLVM) that crashes the process (SIGSEGV at the first ``torch.optim`` after a render: GD planning or
# training next to a MuJoCo env). Loading it first, before the EGL probe below loads any GL library, avoids that.
import torch._dynamo  # noqa: F401

__all__ = ["GL_BACKEND", "OffscreenRenderer", "mujoco"]

log = logging.getLogger(__name__)

_EGL_PLATFORM_DEVICE_EXT = 0x313F


def _egl_device_available() -> bool:
    """True if an EGL device display initializes (what ``mujoco.egl`` needs for a headless context)."""
    path = ctypes.util.find_library("EGL")
    if path is None:
        return False
    try:
        egl = ctypes.CDLL(path)
        get_proc = egl.eglGetProcAddress
        get_proc.restype, get_proc.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
        query_ptr, display_ptr = get_proc(b"eglQueryDevicesEXT"), get_proc(b"eglGetPlatformDisplayEXT")
        if not query_ptr or not display_ptr:
            return False
        query_devices = ctypes.CFUNCTYPE(
            ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int)
        )(query_ptr)
        get_display = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p)(
            display_ptr
        )
        egl.eglInitialize.restype, egl.eglInitialize.argtypes = ctypes.c_uint, [ctypes.c_void_p] * 3
        egl.eglTerminate.restype, egl.eglTerminate.argtypes = ctypes.c_uint, [ctypes.c_void_p]
        devices, num_devices = (ctypes.c_void_p * 16)(), ctypes.c_int(0)
        if not query_devices(16, devices, ctypes.byref(num_devices)):
            return False
        for i in range(num_devices.value):
            display = get_display(_EGL_PLATFORM_DEVICE_EXT, devices[i], None)
            if display and egl.eglInitialize(display, None, None):
                egl.eglTerminate(display)
                return True
    except (OSError, AttributeError):
        return False
    return False


def _choose_gl_backend() -> str:
    """Set ``MUJOCO_GL`` (unless the user did) before ``mujoco`` is imported; return the backend in use."""
    if "mujoco" in sys.modules:
        backend = os.environ.get("MUJOCO_GL", "")
        log.debug("mujoco was imported before mujoco_render; keeping MUJOCO_GL=%r", backend)
        return backend
    if "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl" if _egl_device_available() else "osmesa"
        if os.environ["MUJOCO_GL"] == "osmesa":
            log.info("no EGL device display available; rendering with MUJOCO_GL=osmesa")
    backend = os.environ["MUJOCO_GL"].lower()
    # mujoco.egl sets PYOPENGL_PLATFORM=egl in os.environ, so child processes of an EGL-rendering parent
    # inherit it; mujoco.osmesa then fails to import and mujoco silently ships without a Renderer.
    if backend in ("egl", "osmesa") and "OpenGL" not in sys.modules:
        platform = os.environ.get("PYOPENGL_PLATFORM")
        if platform and platform.lower() != backend:
            log.info("PYOPENGL_PLATFORM=%s conflicts with MUJOCO_GL=%s; using %s", platform, backend, backend)
            os.environ["PYOPENGL_PLATFORM"] = backend
    return backend


GL_BACKEND = _choose_gl_backend()

import mujoco  # noqa: E402  (MUJOCO_GL must be set first)

_live: weakref.WeakSet[OffscreenRenderer] = weakref.WeakSet()
_exit_hook_registered = False


def _close_all() -> None:
    for renderer in list(_live):
        renderer.close()


def _register_exit_hook() -> None:
    # atexit runs hooks last-in first-out. mujoco.egl registers eglTerminate when the first GL context is
    # created, so registering after that guarantees our renderers are freed before the display goes away.
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_close_all)
        _exit_hook_registered = True


class OffscreenRenderer:
    """Fast offscreen RGB rendering of one MuJoCo model from a fixed camera.

    Args:
        model: the model to render. Its render-only settings are adjusted in place: multisampling off
            (``vis.quality.offsamples = 0``) and the offscreen buffer grown to ``size`` if needed.
        size: output image side (square) or ``(height, width)``.
        camera: a camera name or id from the model, or ``-1`` for MuJoCo's default free camera.

    ``render(data)`` returns a fresh ``uint8`` array ``(H, W, 3)`` of the scene in ``data`` (call
    ``mj_forward``/``mj_kinematics`` first so positions are current).
    """

    def __init__(self, model: mujoco.MjModel, size: int | tuple[int, int], camera: str | int = -1) -> None:
        height, width = (size, size) if isinstance(size, int) else size
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {(height, width)}")
        if isinstance(camera, str):
            camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            if camera_id < 0:
                raise ValueError(f"model has no camera named {camera!r}")
            camera = camera_id
        if not -1 <= camera < model.ncam:
            raise ValueError(f"camera id {camera} out of range for a model with {model.ncam} cameras")
        self.camera = int(camera)
        if not hasattr(mujoco, "Renderer"):
            raise RuntimeError(
                f"mujoco has no GL backend (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}, "
                f"PYOPENGL_PLATFORM={os.environ.get('PYOPENGL_PLATFORM')!r}); install the EGL or OSMesa "
                "libraries (see platform notes) or set MUJOCO_GL to a working backend"
            )
        # Render-only settings; read when the GL context is created, so they must be set before.
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        self._renderer: mujoco.Renderer | None = mujoco.Renderer(model, height=height, width=width)
        flags = self._renderer.scene.flags
        for flag in (
            mujoco.mjtRndFlag.mjRND_SHADOW,
            mujoco.mjtRndFlag.mjRND_REFLECTION,
            mujoco.mjtRndFlag.mjRND_SKYBOX,
        ):
            flags[flag] = 0
        _live.add(self)
        _register_exit_hook()

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the rendered images."""
        renderer = self._require_open()
        return renderer.height, renderer.width

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """The scene in ``data`` seen from the fixed camera: ``uint8`` ``(H, W, 3)``."""
        renderer = self._require_open()
        renderer.update_scene(data, camera=self.camera)
        return renderer.render()

    def close(self) -> None:
        """Free the GL context and buffers (idempotent)."""
        if self._renderer is not None:
            # mujoco.Renderer.close() frees its GL objects in whichever GL context is current, which would
            # corrupt the renderer that drew last: make our own context current first.
            context = getattr(self._renderer, "_gl_context", None)
            if context is not None:
                context.make_current()
            self._renderer.close()
            self._renderer = None
        _live.discard(self)

    def _require_open(self) -> mujoco.Renderer:
        if self._renderer is None:
            raise RuntimeError("OffscreenRenderer is closed")
        return self._renderer

    def __enter__(self) -> OffscreenRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Live views of a recording: an OpenCV window where a display exists, a rerun recording otherwise.

``auto`` picks the window when ``$DISPLAY``/``$WAYLAND_DISPLAY`` is set and OpenCV can open
one, else rerun when the ``rerun-sdk`` package is installed (``<dataset>/live.rrd``, open it
with ``rerun live.rrd``, also while recording), else no view (said once, with what to install).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from vla import keys
from vla.registry import Registry

log = logging.getLogger(__name__)


def camera_images(obs: dict[str, Any]) -> dict[str, np.ndarray]:
    return {keys.camera_of(k): np.asarray(v[0]) for k, v in obs.items() if k.startswith(keys.OBS_IMAGE_PREFIX)}


class NoView:
    def show(self, obs: dict[str, Any], recording: bool, human: bool, episodes: int) -> None:
        pass

    def close(self) -> None:
        pass


class WindowView:
    """Cameras side by side, scaled up, with a status line; refreshed at most ``max_hz``."""

    def __init__(self, scale: int = 4, max_hz: float = 15.0):
        import cv2

        self.cv2 = cv2
        self.scale = scale
        self.min_period = 1.0 / max_hz
        self._last = 0.0
        cv2.namedWindow("vla record", cv2.WINDOW_AUTOSIZE)

    def show(self, obs: dict[str, Any], recording: bool, human: bool, episodes: int) -> None:
        import time

        now = time.monotonic()
        if now - self._last < self.min_period:
            return
        self._last = now
        images = list(camera_images(obs).values())
        if not images:
            return
        height = max(i.shape[0] for i in images)
        row = np.concatenate([np.pad(i, ((0, height - i.shape[0]), (0, 0), (0, 0))) for i in images], axis=1)
        row = self.cv2.resize(row, None, fx=self.scale, fy=self.scale, interpolation=self.cv2.INTER_NEAREST)
        bgr = np.ascontiguousarray(row[..., ::-1])
        status = f"{'REC' if recording else 'idle'}  {'person' if human else 'policy'}  saved {episodes}"
        color = (0, 0, 255) if recording else (200, 200, 200)
        self.cv2.putText(bgr, status, (8, 24), self.cv2.FONT_HERSHEY_SIMPLEX, 0.7, color, 2)
        self.cv2.imshow("vla record", bgr)
        self.cv2.waitKey(1)

    def close(self) -> None:
        self.cv2.destroyAllWindows()


class RerunView:
    """Cameras, state and status logged to a rerun recording file (no display needed)."""

    def __init__(self, path: Path):
        import rerun as rr

        self.rr = rr
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rr.init("vla_record", spawn=False)
        rr.save(str(self.path))
        self.tick = 0
        log.info("live view: rerun recording %s (open it with `rerun %s`)", self.path, self.path)

    def show(self, obs: dict[str, Any], recording: bool, human: bool, episodes: int) -> None:
        rr = self.rr
        rr.set_time("tick", sequence=self.tick)
        self.tick += 1
        for camera, image in camera_images(obs).items():
            rr.log(f"cameras/{camera}", rr.Image(image))
        state = np.asarray(obs[keys.OBS_STATE][0], dtype=np.float64)
        rr.log("state", rr.Scalars(state))
        rr.log("status/recording", rr.Scalars(float(recording)))
        rr.log("status/person_in_control", rr.Scalars(float(human)))
        rr.log("status/episodes_saved", rr.Scalars(float(episodes)))

    def close(self) -> None:
        self.rr.rerun_shutdown() if hasattr(self.rr, "rerun_shutdown") else None


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _window(out: Path):
    if not _has_display():
        raise RuntimeError("--view window needs a display ($DISPLAY is not set); use --view rerun or none")
    return WindowView()


def _rerun(out: Path):
    try:
        return RerunView(out / "live.rrd")
    except ImportError:
        raise RuntimeError("--view rerun needs the rerun-sdk package (pip install rerun-sdk)") from None


def _auto(out: Path):
    if _has_display():
        try:
            return WindowView()
        except Exception as e:  # noqa: BLE001 - an OpenCV without GUI support: try the next view
            log.warning("no OpenCV window (%s); trying rerun", e)
    try:
        return RerunView(out / "live.rrd")
    except ImportError:
        log.warning("no live view: no display and no rerun-sdk (pip install rerun-sdk for a recording)")
        return NoView()


VIEWS: Registry = Registry("live view")
VIEWS.add("auto", _auto)
VIEWS.add("window", _window)
VIEWS.add("rerun", _rerun)
VIEWS.add("none", lambda out: NoView())


def make_view(name: str, out: Path):
    return VIEWS.get(name)(Path(out))

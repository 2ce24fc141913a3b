"""Crash-safe episode recording into a LeRobot v3 dataset, for teleoperation and robots.

``EpisodeWriter`` (collection from experts) keeps LeRobot's writers open across episodes, so
a SIGKILL, a power cut or a full disk leaves parquet files without footers and the whole
dataset unreadable. A person's demonstrations are too expensive for that. ``EpisodeRecorder``
commits every episode on its own:

* frames stream into the video encoder while the episode runs (H.264, real time on a CPU),
  so saving a 60 s episode only writes its parquet rows and closes the files (< 2 s);
* after each save the LeRobot writers are finalized and reopened, so every saved episode
  lives in files that are complete on disk, and LeRobot starts new files for the next one;
* a journal (``meta/vla_commits/``) snapshots the few metadata files LeRobot rewrites in
  place (info, stats, tasks) after each commit, with the list of files the commit added.
  A save or an undo in progress is marked by ``meta/vla_pending.json``; opening the dataset
  again (or ``recover``) rolls an interrupted operation back to the last commit.

Only the episode in progress can be lost. Undo of the last saved episode uses the same
rollback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vla.datasets.lerobot_io import (
    EPISODE_LOG,
    RECORDING_FILE,
    NotADatasetError,
    append_episode_labels,
    check_appendable,
    check_dataset_dir,
    is_lerobot_dataset,
    repo_id_for,
    silence_libav_info,
)

log = logging.getLogger(__name__)

COMMITS_DIR = "meta/vla_commits"
PENDING_FILE = "meta/vla_pending.json"
# Files LeRobot rewrites in place on every save; everything else a save writes is a new file.
REWRITTEN_META = ("meta/info.json", "meta/stats.json", "meta/tasks.parquet", EPISODE_LOG, RECORDING_FILE)
PAYLOAD_DIRS = ("data", "videos", "meta/episodes")
EMPTY_COMMIT = -1  # the snapshot taken when the dataset was created (no episodes)


@dataclass(frozen=True)
class VideoSettings:
    """How camera streams are encoded while recording. H.264 ``ultrafast`` keeps up with two
    640x480 cameras at 30 Hz on two cores (``vla bench record``); LeRobot's default AV1 does not."""

    codec: str = "h264"
    preset: str | int | None = "ultrafast"
    crf: int = 23
    gop: int = 2  # keyframe interval: LeRobot's loaders seek to any frame
    queue_frames: int = 90  # frames buffered per camera while the encoder catches up (3 s at 30 Hz)

    def encoder(self):
        from lerobot.configs.video import RGBEncoderConfig

        return RGBEncoderConfig(vcodec=self.codec, preset=self.preset, crf=self.crf, g=self.gop)


@dataclass
class SavedEpisode:
    index: int
    frames: int
    save_seconds: float  # from save_episode() called to control back to the caller
    dropped_frames: int  # camera frames the encoder could not take (0 in a healthy run)
    labels: dict[str, Any]


# --------------------------------------------------------------------------- LeRobot shim
def _skip_empty_image_embedding() -> None:
    """LeRobot 0.6's writer runs ``embed_images`` (a per-row ``datasets.map``, ~2 ms a row) on
    every saved episode, also when it has no image columns to embed: 3.5 s of a 60 s episode's
    save at 30 Hz. Skip the map when there is nothing to embed; datasets with PNG image
    columns go through LeRobot's own function unchanged."""
    import datasets
    from lerobot.datasets import dataset_writer

    original = dataset_writer.embed_images
    if getattr(original, "_vla_shim", False):
        return

    def embed_images(dataset):
        if not any(isinstance(f, datasets.Image) for f in dataset.features.values()):
            return dataset
        return original(dataset)

    embed_images._vla_shim = True  # type: ignore[attr-defined]
    dataset_writer.embed_images = embed_images


# --------------------------------------------------------------------------- journal
def _payload_files(root: Path) -> set[str]:
    found = set()
    for sub in PAYLOAD_DIRS:
        base = root / sub
        if base.is_dir():
            found |= {p.relative_to(root).as_posix() for p in base.rglob("*") if p.is_file()}
    return found


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _commit_dir(root: Path, index: int) -> Path:
    return root / COMMITS_DIR / ("empty" if index == EMPTY_COMMIT else f"{index:06d}")


def committed_episodes(root: str | Path) -> list[int]:
    """Indices of the episodes the journal holds as committed, in order."""
    base = Path(root) / COMMITS_DIR
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def _snapshot(root: Path, index: int, added: Sequence[str]) -> None:
    """Record commit ``index``: copies of the rewritten metadata and the files it added."""
    final = _commit_dir(root, index)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for rel in REWRITTEN_META:
        src = root / rel
        if src.is_file():
            dst = tmp / rel.replace("/", "__")
            shutil.copy2(src, dst)
    (tmp / "added.json").write_text(json.dumps(sorted(added)))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _rollback_to(root: Path, keep_through: int) -> None:
    """Make the dataset exactly what it was after commit ``keep_through`` (EMPTY_COMMIT: just
    created). Idempotent, so an interrupted rollback is finished by running it again."""
    commits = committed_episodes(root)
    kept = [c for c in commits if c <= keep_through]
    allowed: set[str] = set()
    for c in kept:
        allowed |= set(json.loads((_commit_dir(root, c) / "added.json").read_text()))
    for rel in _payload_files(root) - allowed:
        (root / rel).unlink()
    snapshot = _commit_dir(root, keep_through)
    if not snapshot.is_dir():
        raise NotADatasetError(f"{root}: the journal has no snapshot for commit {keep_through}; cannot roll back")
    for rel in REWRITTEN_META:
        saved = snapshot / rel.replace("/", "__")
        target = root / rel
        if saved.is_file():
            tmp = target.with_name(target.name + ".restore")
            shutil.copy2(saved, tmp)
            os.replace(tmp, target)
        elif target.is_file():
            target.unlink()
    for c in commits:
        if c > keep_through:
            shutil.rmtree(_commit_dir(root, c))
    _remove_staging(root)


def _remove_staging(root: Path) -> None:
    """Frames of an episode in progress: PNG staging (``images/``) and streaming-encoder temp dirs."""
    shutil.rmtree(root / "images", ignore_errors=True)
    for p in root.glob("tmp*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def recover(root: str | Path) -> str | None:
    """Finish what a killed recorder left: roll back an interrupted save or undo and drop the
    frames of the episode in progress. Returns what was done (None: nothing to do)."""
    root = Path(root)
    pending = root / PENDING_FILE
    if not pending.is_file():
        had_staging = (root / "images").exists() or any(p.is_dir() for p in root.glob("tmp*"))
        _remove_staging(root)
        return "dropped the frames of an episode in progress" if had_staging else None
    try:
        op = json.loads(pending.read_text())
    except json.JSONDecodeError:  # killed while writing the marker: nothing had started
        pending.unlink()
        _remove_staging(root)
        return "removed a half-written journal marker"
    _rollback_to(root, int(op["keep_through"]))
    pending.unlink()
    _fsync_dir(pending.parent)
    return f"rolled back an interrupted {op['op']} of episode {op['episode']} to the last committed episode"


# --------------------------------------------------------------------------- recorder
class EpisodeRecorder:
    """Stream frames into a LeRobot v3 dataset, one durable commit per episode.

    ``add_frame`` as the episode runs; ``save_episode(labels)`` commits it (labels: success,
    intervention counts, timing, written to ``meta/vla_episodes.jsonl``); ``discard_episode``
    drops it; ``undo_last_episode`` removes the last committed one. Appending to an existing
    dataset recovers it first and needs the same features and fps.
    """

    def __init__(
        self,
        root: str | Path,
        fps: int,
        features: dict[str, dict[str, Any]],
        robot_type: str | None = None,
        use_videos: bool = True,
        recording: dict[str, Any] | None = None,
        video: VideoSettings = VideoSettings(),
    ):
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        self._LeRobotDataset = LeRobotDataset
        self._reopen: threading.Thread | None = None
        _skip_empty_image_embedding()
        if use_videos:
            silence_libav_info()
        self.root = Path(root)
        check_dataset_dir(self.root)
        self.fps, self.features, self.robot_type, self.use_videos = fps, features, robot_type, use_videos
        self.video = video
        self.recovered = recover(self.root) if is_lerobot_dataset(self.root) else None
        if self.recovered:
            log.warning("%s: %s", self.root, self.recovered)
        if is_lerobot_dataset(self.root):
            check_appendable(self.root, self.features, self.fps, recording)
            if not committed_episodes(self.root) and not _commit_dir(self.root, EMPTY_COMMIT).is_dir():
                # a dataset from `vla collect` or elsewhere: journal its current state as the base
                _snapshot(self.root, EMPTY_COMMIT, [])
            self.dataset = self._open(resume=True)
        else:
            if self.root.is_dir():
                shutil.rmtree(self.root)  # empty directory: LeRobot wants to create it itself
            self.dataset = self._open(resume=False)
            if recording is not None:
                _write_atomic(self.root / RECORDING_FILE, json.dumps(recording, indent=2))
            _snapshot(self.root, EMPTY_COMMIT, [])
        self._closed = False

    # -- opening
    def _open(self, resume: bool):
        common = dict(
            batch_encoding_size=1,
            rgb_encoder=self.video.encoder() if self.use_videos else None,
            streaming_encoding=self.use_videos,
            encoder_queue_maxsize=self.video.queue_frames,
            encoder_threads=1,
        )
        repo_id = repo_id_for(self.root)
        if resume:
            return self._LeRobotDataset.resume(repo_id, root=self.root, **common)
        return self._LeRobotDataset.create(
            repo_id,
            fps=self.fps,
            features=self.features,
            root=self.root,
            robot_type=self.robot_type,
            use_videos=self.use_videos,
            **common,
        )

    def _reopen_in_background(self) -> None:
        """Reopen LeRobot's writer for the next episode (~1.3 s of metadata loading) while the
        operator resets the scene: the saved episode is already committed, and the first use of
        ``self.dataset`` waits for the reopen."""

        def reopen():
            try:
                self._dataset = self._open(resume=True)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self._reopen_error = e

        self._reopen_error: BaseException | None = None
        self._reopen = threading.Thread(target=reopen, name="lerobot-reopen", daemon=True)
        self._reopen.start()

    @property
    def dataset(self):
        """LeRobot's dataset in write mode (waits for a reopen in progress)."""
        if self._reopen is not None:
            self._reopen.join()
            self._reopen = None
            if self._reopen_error is not None:
                raise RuntimeError(f"reopening {self.root} for the next episode failed") from self._reopen_error
        return self._dataset

    @dataset.setter
    def dataset(self, value) -> None:
        self._dataset = value

    @property
    def num_episodes(self) -> int:
        return self.dataset.meta.total_episodes

    @property
    def frames_in_episode(self) -> int:
        buffer = self.dataset.writer.episode_buffer
        return 0 if buffer is None else int(buffer["size"])

    # -- frames
    def add_frame(self, frame: dict[str, Any]) -> None:
        self.dataset.add_frame(dict(frame))

    def _dropped_frames(self) -> int:
        encoder = getattr(self.dataset.writer, "_streaming_encoder", None)
        return int(sum(getattr(encoder, "_dropped_frames", {}).values())) if encoder is not None else 0

    def save_episode(self, labels: dict[str, Any] | None = None) -> SavedEpisode:
        """Commit the episode in progress. When this returns, the episode is on disk for good.

        An episode whose camera frames the encoder had to drop is refused (its video would be
        shorter than its data): it is discarded and ``RuntimeError`` says how many."""
        started = time.perf_counter()
        frames = self.frames_in_episode
        if frames == 0:
            raise ValueError("no frames in this episode; nothing to save")
        dropped = self._dropped_frames()
        if dropped:
            self.discard_episode()
            raise RuntimeError(
                f"the video encoder dropped {dropped} camera frames of this episode (it could not keep up); "
                "the episode was discarded. Lower the camera resolution or rate, or raise the encoder queue."
            )
        index = self.num_episodes
        before = _payload_files(self.root)
        last = max(committed_episodes(self.root), default=EMPTY_COMMIT)
        _write_atomic(self.root / PENDING_FILE, json.dumps({"op": "save", "episode": index, "keep_through": last}))
        labels = {"episode_index": index, "frames": frames, **(labels or {})}
        try:
            self.dataset.save_episode()
            self.dataset.finalize()  # every writer closed: all saved episodes are complete files
            append_episode_labels(self.root, labels)
            _snapshot(self.root, index, sorted(_payload_files(self.root) - before))
        except Exception as e:  # a full disk, a failed encoder: back to the last commit
            self._abandon_writer()
            try:
                _rollback_to(self.root, last)
                (self.root / PENDING_FILE).unlink()
            except Exception as rollback_error:  # noqa: BLE001 - still failing (disk full): next open recovers
                raise RuntimeError(
                    f"saving episode {index} failed ({e}) and so did rolling it back ({rollback_error}); "
                    f"the next EpisodeRecorder or `recover({str(self.root)!r})` restores the saved episodes"
                ) from e
            self.dataset = self._open(resume=True)
            raise RuntimeError(
                f"saving episode {index} failed ({type(e).__name__}: {e}); the episode is lost and the dataset "
                f"keeps its {self.num_episodes} saved episodes"
            ) from e
        (self.root / PENDING_FILE).unlink()
        _fsync_dir(self.root / "meta")
        self._reopen_in_background()  # LeRobot starts new files for the next episode
        return SavedEpisode(index, frames, time.perf_counter() - started, dropped, labels)

    def _abandon_writer(self) -> None:
        """Drop LeRobot's writer after a failed save without letting it write more (its own
        finalize would flush buffered metadata of the failed episode)."""
        writer = self.dataset.writer
        with contextlib.suppress(Exception):
            writer.cancel_pending_videos()
        for owner in (writer, self.dataset.meta):
            pq_writer = getattr(owner, "_pq_writer", None)
            if pq_writer is not None:
                with contextlib.suppress(Exception):
                    pq_writer.close()
                owner._pq_writer = None
        buffer = getattr(self.dataset.meta, "_metadata_buffer", None)
        if buffer is not None:
            buffer.clear()
        writer._finalized = True
        self.dataset.meta._finalized = True
        self.dataset._is_finalized = True

    def discard_episode(self) -> int:
        """Drop the frames of the episode in progress; returns how many were dropped."""
        frames = self.frames_in_episode
        self.dataset.clear_episode_buffer()
        return frames

    def undo_last_episode(self) -> int:
        """Remove the last committed episode (and nothing before it); returns its index."""
        commits = committed_episodes(self.root)
        if not commits:
            raise ValueError(f"{self.root}: no episode recorded in this dataset's journal to undo")
        self.discard_episode()
        self.dataset.finalize()
        last = commits[-1]
        keep = commits[-2] if len(commits) > 1 else EMPTY_COMMIT
        _write_atomic(self.root / PENDING_FILE, json.dumps({"op": "undo", "episode": last, "keep_through": keep}))
        _rollback_to(self.root, keep)
        (self.root / PENDING_FILE).unlink()
        self.dataset = self._open(resume=True)
        return last

    def close(self) -> None:
        """Finalize; the episode in progress (if any) is dropped, as after a crash."""
        if self._closed:
            return
        self._closed = True
        if self.frames_in_episode:
            self.discard_episode()
        self.dataset.finalize()
        _remove_staging(self.root)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = [
    "EpisodeRecorder",
    "SavedEpisode",
    "VideoSettings",
    "committed_episodes",
    "recover",
]

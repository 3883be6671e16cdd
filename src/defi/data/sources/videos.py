"""Human-video folders (Something-Something-v2 / Ego4D shaped) as action-free episodes.

A folder of mp4/webm files plus a captions file, either CSV with a header (`file,caption[,start,end]`) or JSONL
(`{"file": ..., "caption": ..., "start": ..., "end": ...}` per line); start/end are optional, in seconds;
files are relative to the captions file's folder. Each row becomes one episode: the frames shown at times
start, start + 1/fps, ... (before end) decoded with PyAV, scaled so the short side is `size` and centre-cropped
to size x size. Rows are written atomically in row order (keys `<row>-<file stem>`), so re-running resumes.

A caption naming a missing file, an unreadable video or an empty time range stops the ingest with an error
naming the file; with `skip_bad` the row is skipped and counted instead. Episodes already written stay.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import tyro

from defi.config import Config
from defi.errors import DefiError

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov")


@dataclass
class CaptionRow:
    line: int
    file: Path
    caption: str
    start: float | None = None
    end: float | None = None


@dataclass
class IngestReport:
    out: Path
    written: int = 0
    existing: int = 0
    frames: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.out}: wrote {self.written} episodes ({self.frames} frames), {self.existing} already there"
        if self.skipped:
            text += f", skipped {len(self.skipped)} bad rows:\n  " + "\n  ".join(self.skipped)
        return text


def _number(value: Any, where: str, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DefiError(f"{where}: {name}={value!r}, expected a number of seconds") from None
    if out < 0:
        raise DefiError(f"{where}: {name}={value!r}, expected >= 0 seconds")
    return out


def read_captions(path: str | Path) -> list[CaptionRow]:
    """Rows of a CSV or JSONL captions file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DefiError(f"{path}: captions file not found")
    base = path.parent
    raw: list[tuple[int, dict[str, Any]]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = set(reader.fieldnames or [])
            if not {"file", "caption"} <= fields:
                raise DefiError(f"{path}: CSV header {sorted(fields)}; expected columns file, caption[, start, end]")
            raw = [(i + 2, row) for i, row in enumerate(reader)]
    elif path.suffix.lower() in (".jsonl", ".json"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DefiError(f"{path}:{i}: not valid JSON ({err})") from None
            if not isinstance(row, dict):
                raise DefiError(f"{path}:{i}: expected an object with file and caption")
            raw.append((i, row))
    else:
        raise DefiError(f"{path}: captions must be .csv or .jsonl")
    rows = []
    for line, row in raw:
        where = f"{path}:{line}"
        if not row.get("file") or row.get("caption") in (None, ""):
            raise DefiError(f"{where}: expected non-empty file and caption")
        start, end = _number(row.get("start"), where, "start"), _number(row.get("end"), where, "end")
        if start is not None and end is not None and end <= start:
            raise DefiError(f"{where}: end={end} <= start={start}")
        rows.append(CaptionRow(line, base / str(row["file"]), str(row["caption"]), start, end))
    if not rows:
        raise DefiError(f"{path}: no caption rows")
    return rows


def _to_square(frame: Any, size: int) -> np.ndarray:
    """Scale so the short side is `size` (PyAV's swscale), then centre-crop to size x size."""
    scale = size / min(frame.width, frame.height)
    width, height = max(size, round(frame.width * scale)), max(size, round(frame.height * scale))
    rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
    top, left = (height - size) // 2, (width - size) // 2
    return rgb[top : top + size, left : left + size]


def decode_clip(path: Path, fps: float, size: int, start: float | None = None, end: float | None = None) -> np.ndarray:
    """uint8 [T, size, size, 3]: the frames shown at start + k / fps for every such time before `end`."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise DefiError(f"{path}: unreadable video ({err})") from None
    try:
        if not container.streams.video:
            raise DefiError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        t0 = start or 0.0
        if t0 > 0:
            container.seek(int(t0 * av.time_base), backward=True)
        stop = float("inf") if end is None else end
        out: list[np.ndarray] = []
        prev: Any = None  # the last decoded frame: the one on screen until the next frame's time
        prev_rgb: np.ndarray | None = None

        def emit_until(limit: float) -> None:
            nonlocal prev_rgb
            while t0 + len(out) / fps < min(limit, stop) - 1e-6:
                if prev_rgb is None:
                    prev_rgb = _to_square(prev, size)
                out.append(prev_rgb)

        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                if prev is not None:
                    emit_until(frame.time)
                if t0 + len(out) / fps >= stop:
                    break
                prev, prev_rgb = frame, None
            if prev is not None:
                rate = float(stream.average_rate or 0) or fps
                emit_until(prev.time + 1.0 / rate)  # the last frame stays on screen for one frame period
        except av.error.FFmpegError as err:
            raise DefiError(f"{path}: unreadable video ({err})") from None
    finally:
        container.close()
    if not out:
        raise DefiError(f"{path}: no frames between {start or 0.0}s and {end if end is not None else 'the end'}")
    return np.stack(out)


def _key(row: CaptionRow) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", row.file.stem)[:60]
    return f"{row.line:06d}-{stem}"


def ingest_videos(captions: str | Path, out: str | Path, fps: float = 10.0, size: int = 64, camera: str = "main",
                  source: str = "videos", skip_bad: bool = False, progress: bool = True) -> IngestReport:
    """Ingest the rows of a captions file into an action-free store at `out` (resumable)."""
    from tqdm import tqdm

    from defi.data.store import EpisodeStore, StoreInfo, feature_spec

    if fps <= 0:
        raise DefiError(f"fps={fps}: expected > 0")
    if size < 8:
        raise DefiError(f"size={size}: expected >= 8 pixels")
    rows = read_captions(captions)
    key = f"observation.images.{camera}"
    info = StoreInfo(fps=float(fps), cameras=[camera], image_size=[size, size], has_actions=False, source=source,
                     embodiment="human", robot_type="human",
                     features=feature_spec([camera], [size, size], {key: np.zeros((1, size, size, 3), np.uint8)}))
    store = EpisodeStore.create(out, info)
    report = IngestReport(out=Path(out))
    try:
        for row in tqdm(rows, desc="videos", unit="video", disable=not progress):
            if store.has_episode(_key(row)):
                report.existing += 1
                continue
            try:
                if not row.file.is_file():
                    raise DefiError(f"{captions}:{row.line}: names missing file {row.file}")
                frames = decode_clip(row.file, fps, size, row.start, row.end)
            except DefiError as err:
                if not skip_bad:
                    raise
                report.skipped.append(str(err))
                continue
            attrs = {"task": row.caption, "task_name": None, "success": None, "seed": None, "fps": float(fps),
                     "source": source, "embodiment": "human", "file": str(row.file), "start": row.start,
                     "end": row.end, "has_actions": False}
            store.write_episode(_key(row), {key: frames}, attrs)
            report.written += 1
            report.frames += len(frames)
    finally:
        store.finalize()
    return report


@dataclass
class VideosConfig(Config):
    """`defi data videos`: ingest a folder of videos with captions as action-free episodes."""

    folder: Annotated[Path, tyro.conf.Positional]
    """Folder with the videos and captions.csv / captions.jsonl."""
    out: Path = Path("data/videos")
    """Output store directory (re-running with the same directory resumes)."""
    captions: Path | None = None
    """Captions file (default: FOLDER/captions.csv or FOLDER/captions.jsonl)."""
    fps: float = 10.0
    """Target frame rate."""
    size: int = 64
    """Square frame size in pixels."""
    camera: str = "main"
    """Camera name of the view."""
    source: str = "videos"
    """Source tag stored with every episode."""
    skip_bad: bool = False
    """Skip unreadable or missing videos (they are counted) instead of stopping."""
    progress: bool = True


def run(cfg: VideosConfig) -> IngestReport:
    captions = cfg.captions
    if captions is None:
        found = [cfg.folder / n for n in ("captions.csv", "captions.jsonl") if (cfg.folder / n).is_file()]
        if not found:
            raise DefiError(f"{cfg.folder}: no captions.csv or captions.jsonl (pass --captions FILE)")
        captions = found[0]
    report = ingest_videos(captions, cfg.out, fps=cfg.fps, size=cfg.size, camera=cfg.camera, source=cfg.source,
                           skip_bad=cfg.skip_bad, progress=cfg.progress)
    print(report.summary())
    return report

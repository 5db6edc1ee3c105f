"""Video files in and out through PyAV, and frames brought to the model's size and channel count.

Everything that touches a codec lives here, so the archive readers, the cache and the generator share one notion
of a video: uint8 frames ``(time, channels, 64, 64)``. Gray archives store their frames as YUV (the luma plane
carries the picture, the chroma planes stay neutral), so "one channel" is a property of the content, not of the
pixel format: a gray read takes the luma plane, and a video counts as colored only if its chroma moves.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from . import IMAGE_SIZE, DatasetError

# Mean |R-G| + |G-B| above this (in 0..255 steps) means real color, not codec noise on gray content.
COLOR_THRESHOLD = 1.0
# libx264 at a fixed small quantizer: near-lossless for 64x64 frames, and still the widely playable High profile.
X264_OPTIONS = {"qp": "2"}
MPEG4_BIT_RATE = 2_000_000

Source = str | os.PathLike | io.BytesIO
MAX_FILE_BYTES = 2 << 30
"""A video file of the archives is a few MB (KTH's up to 10 MB): a larger one is refused before it is read."""
MAX_SIDE = 1024
"""The widest and tallest frame read (the archives' are 64x64 and KTH's 160x120): checked in the header, and again on
every decoded frame, before a frame is converted."""
MAX_DECODED_BYTES = 512 << 20
"""What one video's frames may take decoded, before they are resized to 64x64 (the archives' take at most 20 MB)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a file holds, read from its header without decoding every frame."""

    frames: int
    width: int
    height: int
    pix_fmt: str


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _open(source: Source, label: str):
    try:
        container = av.open(source)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read {label} as a video: {_one_line(error)}") from error
    if not container.streams.video:
        container.close()
        raise DatasetError(f"{label} holds no video stream")
    stream = container.streams.video[0]
    codec = stream.codec_context
    try:
        check_size(label, codec.width, codec.height, stream.frames)
    except DatasetError:
        container.close()
        raise
    return container


def check_size(label: str, width: int, height: int, frames: int = 0) -> None:
    """``DatasetError`` when frames of ``width`` x ``height`` (``frames`` of them, 0 where unknown) exceed
    ``MAX_SIDE`` or ``MAX_DECODED_BYTES`` as RGB: refused before they are decoded."""
    if max(width, height) > MAX_SIDE:
        raise DatasetError(f"{label} declares {width}x{height} frames, more than the {MAX_SIDE}x{MAX_SIDE} "
                           f"pyro-cwvae reads")
    if frames * width * height * 3 > MAX_DECODED_BYTES:
        raise DatasetError(f"{label} declares {frames:,} frames of {width}x{height}, more than the "
                           f"{MAX_DECODED_BYTES >> 20} MiB of frames pyro-cwvae decodes from one video")


def probe(source: Source, label: str) -> VideoInfo:
    """Frame count, size and pixel format of a file (counting packets when the header lacks the count)."""
    with _open(source, label) as container:
        stream = container.streams.video[0]
        frames = stream.frames
        try:
            if not frames:
                frames = sum(1 for packet in container.demux(stream) if packet.size)
        except av.FFmpegError as error:
            raise DatasetError(f"cannot read {label} as a video: {_one_line(error)}") from error
        codec = stream.codec_context
        return VideoInfo(frames, codec.width, codec.height, codec.pix_fmt or "?")


def decode(source: Source, label: str, channels: int) -> tuple[np.ndarray, bool]:
    """Every frame as uint8 ``(time, channels, height, width)``, and whether the content has color. One channel reads
    the luma plane (the gray picture, exactly as stored); three read RGB. The converters are kept for the whole file: a
    fresh one per frame (``frame.to_ndarray(format=...)``) is several times slower."""
    to_gray, to_rgb = VideoReformatter(), VideoReformatter()
    frames, color = [], 0.0
    with _open(source, label) as container:
        promised = container.streams.video[0].frames  # 0 where the header does not say
        try:
            for frame in container.decode(video=0):
                check_size(label, frame.width, frame.height, len(frames) + 1)
                rgb = to_rgb.reformat(frame, format="rgb24").to_ndarray()
                picture = rgb if channels == 3 else to_gray.reformat(frame, format="gray").to_ndarray()
                color = max(color, _colorfulness(rgb))
                frames.append(picture)
        except av.FFmpegError as error:
            raise DatasetError(f"cannot decode {label}: {_one_line(error)}") from error
    if not frames:
        raise DatasetError(f"{label} holds no frames")
    if len(frames) < promised:  # a cut-off file can decode cleanly, only shorter: never pass it on as whole
        raise DatasetError(f"{label} is truncated: its header lists {promised} frames but only {len(frames)} "
                           f"decode; replace or remove the file")
    video = np.stack(frames)
    video = video[:, None] if channels == 1 else video.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(video), color > COLOR_THRESHOLD


def _colorfulness(rgb: np.ndarray) -> float:
    """Mean channel disagreement of one RGB frame: zero for gray content."""
    rgb = rgb.astype(np.int16)
    return float(np.abs(rgb[..., 0] - rgb[..., 1]).mean() + np.abs(rgb[..., 1] - rgb[..., 2]).mean())


def read_video(source: Source, label: str, channels: int,
               expected_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> np.ndarray:
    """A file as uint8 ``(time, channels, 64, 64)``, warning when it is not what the archive should hold.
    ``expected_size`` is ``(width, height)`` of the archive's videos; other sizes are still read (center-cropped to a
    square, then area-resized), with a warning naming the file, as are colored videos in a gray archive (reduced to
    luma) and gray videos in a color archive (the channel repeated)."""
    video, colored = decode(source, label, channels)
    if channels == 1 and colored:
        warnings.warn(f"{label} has color but this dataset is gray: reading its luma (gray) channel", stacklevel=2)
    if channels == 3 and not colored:
        warnings.warn(f"{label} is gray but this dataset is RGB: its gray channel is repeated 3 times", stacklevel=2)
    height, width = video.shape[-2:]
    if (width, height) != tuple(expected_size):
        expected = f"{expected_size[0]}x{expected_size[1]}"
        warnings.warn(f"{label} is {width}x{height}, not {expected}: center-cropped to a square and area-resized "
                      f"to 64x64", stacklevel=2)
    return square_resize(video)


def square_resize(video: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Center-crop ``(T, C, H, W)`` to a square, then resize to ``size`` by area averaging (a no-op at size)."""
    height, width = video.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    video = video[..., top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(video)
    weights = area_weights(side, size)
    # weights @ frame @ weights.T for every frame, as two 2-D products over all frames at once: a batched matmul is
    # one small BLAS call per frame, which a multithreaded BLAS on a busy machine made 30x slower (6 s a KTH video).
    lead = video.shape[:-2]
    columns = np.swapaxes(video.astype(np.float32), -1, -2).reshape(-1, side) @ weights.T  # (weights @ frame).T
    resized = np.swapaxes(columns.reshape(*lead, side, size), -1, -2).reshape(-1, side) @ weights.T
    return np.clip(np.rint(resized.reshape(*lead, size, size)), 0, 255).astype(np.uint8)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix: output pixel i averages the input span it covers, partial pixels by overlap."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    pixel = np.arange(n_in)[None, :]
    overlap = np.minimum(edges[1:, None], pixel + 1) - np.maximum(edges[:-1, None], pixel)
    overlap = np.clip(overlap, 0.0, None).astype(np.float32)
    return overlap / overlap.sum(axis=1, keepdims=True)


def default_codec() -> str:
    """libx264 where this PyAV build has it; otherwise MPEG-4 Part 2, with a warning about its larger loss."""
    if "libx264" in av.codecs_available:
        return "libx264"
    warnings.warn("this PyAV build has no libx264: writing MPEG-4 Part 2 instead (larger codec loss)", stacklevel=2)
    return "mpeg4"


def write_video(path: str | os.PathLike, video: np.ndarray, *, codec: str | None = None,
                container_format: str | None = None, fps: int = 10) -> None:
    """Encode uint8 ``(time, channels, height, width)`` (1 or 3 channels) as yuv420p video. Gray frames go in through
    the luma plane, so a gray read gives them back up to codec loss. The container (mp4, avi) follows the file's
    extension unless ``container_format`` names it (for temporary names)."""
    codec = codec or default_codec()
    _, channels, height, width = video.shape
    fmt = "gray" if channels == 1 else "rgb24"
    with av.open(os.fspath(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = dict(X264_OPTIONS)
        else:
            stream.bit_rate = MPEG4_BIT_RATE
        for picture in video:
            picture = picture[0] if channels == 1 else picture.transpose(1, 2, 0)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format=fmt)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))

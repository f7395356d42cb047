"""Calibration inputs: folders of .npy / .npz / images, arrays, dicts and iterables of
them, turned into onnxruntime feed dicts one batch at a time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterator, Mapping

import numpy as np

__all__ = ["iter_inputs"]

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_MAX_FILE_BYTES = 1 << 30          # calibration files are read whole: refuse anything huge


def _load_array_file(path: Path):
    if path.stat().st_size > _MAX_FILE_BYTES:
        raise ValueError(f"data: {path} is larger than {_MAX_FILE_BYTES} bytes")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _load_image(path: Path, size, mean, std):
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("reading an image folder needs Pillow: pip install pillow") from exc
    bilinear = getattr(getattr(Image, "Resampling", Image), "BILINEAR")
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((size[1], size[0]), bilinear)
        pixels = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    scaled = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1)[None].astype(np.float32))  # NCHW


def iter_inputs(data, input_names, image_size=None, image_mean=(0.5, 0.5, 0.5),
                image_std=(0.5, 0.5, 0.5)) -> Iterator[Dict[str, np.ndarray]]:
    """Feed dicts for ``InferenceSession.run`` from `data` (see :func:`calibrate_model`)."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file()
                           and p.suffix.lower() in (".npy", ".npz") + _IMAGE_EXT)
            if not files:
                raise ValueError(f"data: {path} holds no .npy, .npz or image files")
        elif path.is_file():
            files = [path]
        else:
            raise ValueError(f"data: {path} does not exist")
        for f in files:
            suffix = f.suffix.lower()
            if suffix in _IMAGE_EXT:
                if image_size is None:
                    raise ValueError("data: images need image_size=(H, W) when the model's "
                                     "input size is not fixed")
                yield {input_names[0]: _load_image(f, image_size, image_mean, image_std)}
            else:
                yield _as_feed(_load_array_file(f), input_names, f"data file {f.name}")
        return
    if isinstance(data, (np.ndarray, Mapping)):
        data = [data]
    try:
        it = iter(data)
    except TypeError:
        raise TypeError(f"data must be a path, an array, a dict or an iterable of them, "
                        f"got {type(data).__name__}") from None
    i = 0
    for item in it:                  # (not enumerate: its cached result tuple keeps the item)
        feed = _as_feed(item, input_names, f"data item {i}")
        item = None                  # hold no batch while suspended: one batch in memory
        yield feed
        feed = None
        i += 1


def _as_feed(item, input_names, what):
    if isinstance(item, Mapping):
        missing = [n for n in input_names if n not in item]
        if missing:
            raise ValueError(f"{what}: missing model inputs {missing}")
        return {n: np.asarray(item[n]) for n in input_names}
    if isinstance(item, np.ndarray):
        if len(input_names) != 1:
            raise ValueError(f"{what}: the model has inputs {input_names}; give a dict (.npz)")
        return {input_names[0]: item}
    raise TypeError(f"{what}: expected an array or a dict of arrays, got {type(item).__name__}")



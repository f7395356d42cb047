"""Text-line images for the PaddleOCR direction classifier (tests and bench).

Pillow renders random words (its default font) dark on a light background into
48 x 192 RGB lines; every other line is rotated 180 degrees, so both classes occur.
Without Pillow, a synthetic stand-in: random dark strokes on a light background.
Preprocessing as PaddleOCR's classifier: ``(pixel / 255 - 0.5) / 0.5``, NCHW float32.
"""

import numpy as np

WORDS = ("quantize calibrate entropy tensor model int8 scale zero point onnx runtime "
         "histogram channel percentile kernel bias weight layer batch sample").split()


def text_lines(n, seed=0):
    """(n, 3, 48, 192) float32 inputs and the rotation of each line (0 or 1)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, 48, 192), np.float32)
    flipped = np.arange(n) % 2
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        Image = None
    for j in range(n):
        bg = int(rng.integers(180, 256))
        if Image is not None:
            img = Image.new("RGB", (192, 48), (bg, bg, bg))
            draw = ImageDraw.Draw(img)
            size = int(rng.integers(18, 30))
            try:
                font = ImageFont.load_default(size=size)
            except TypeError:                    # Pillow < 10.1: fixed-size bitmap font
                font = ImageFont.load_default()
            text = " ".join(rng.choice(WORDS, 3))
            ink = int(rng.integers(0, 90))
            draw.text((int(rng.integers(0, 12)), int(rng.integers(4, 14))), text,
                      fill=(ink, ink, ink), font=font)
            if flipped[j]:
                img = img.rotate(180)
            a = np.asarray(img, dtype=np.float32)
        else:
            a = np.full((48, 192, 3), bg, np.float32)
            for _ in range(12):
                r, c = int(rng.integers(10, 34)), int(rng.integers(0, 180))
                a[r:r + int(rng.integers(2, 12)), c:c + int(rng.integers(2, 12))] = rng.integers(0, 90)
            if flipped[j]:
                a = a[::-1, ::-1]
        out[j] = ((a / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return out, flipped

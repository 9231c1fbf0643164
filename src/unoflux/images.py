"""Reading reference images from users safely, and writing outputs atomically with their settings."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, PngImagePlugin

from .errors import UnofluxError

ImageInput = str | os.PathLike | Image.Image

MIN_SIDE = 16  # one packed FLUX token covers 16x16 pixels
MAX_PIXELS = 64_000_000  # ~8000x8000; beyond this PIL's decompression-bomb guard trips anyway
SETTINGS_KEY = "unoflux"  # PNG text chunk holding the JSON settings


def load_image(source: ImageInput, what: str = "reference image") -> Image.Image:
    """Open ``source`` as an upright 8-bit RGB image, or raise one clear :class:`UnofluxError`.

    Handles EXIF orientation (photos taken rotated), palette/grey/16-bit/CMYK modes, and alpha
    (composited on white, as a product shot would be; the reference drops alpha, which turns
    transparent backgrounds black). Refuses truncated, unreadable, tiny and decompression-bomb images.
    """
    name = "image" if isinstance(source, Image.Image) else str(source)
    if isinstance(source, Image.Image):
        image = source
    else:
        path = Path(source)
        if path.is_dir():
            raise UnofluxError(f"{what} {name!r} is a folder; give an image file")
        if not path.is_file():
            raise UnofluxError(f"{what} {name!r} does not exist or is not a file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(path)
                if image.width * image.height > MAX_PIXELS:
                    raise Image.DecompressionBombError("too many pixels")
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UnofluxError(
                f"{what} {name!r} is too large to decode safely; use one with at most {MAX_PIXELS:,} pixels"
            ) from None
        except (OSError, SyntaxError, ValueError) as err:
            # Pillow's message often repeats the path ("cannot identify image file '/x/a.png'"): name the file once
            detail = str(err).replace(f" {name!r}", "").replace(name, "the file")
            raise UnofluxError(f"{what} {name!r} cannot be read as an image ({detail})") from None
    if image.width < MIN_SIDE or image.height < MIN_SIDE:
        raise UnofluxError(
            f"{what} {name!r} is {image.width}x{image.height}; both sides must be at least {MIN_SIDE} px"
        )
    return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits, don't clip
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray((array / peak * 255).round().clip(0, 255).astype("uint8"), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def png_with_settings(image: Image.Image, settings: dict[str, Any]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text(SETTINGS_KEY, json.dumps(settings, sort_keys=True))
    if "prompt" in settings:
        info.add_text("Description", str(settings["prompt"]))
    info.add_text("Software", "unoflux")
    return info


def read_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The settings a PNG written by :func:`save_png` carries."""
    with Image.open(path) as image:
        return json.loads(image.text[SETTINGS_KEY])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_png(image: Image.Image, path: str | os.PathLike, settings: dict[str, Any]) -> Path:
    """Write ``image`` as a PNG carrying ``settings`` (JSON in a text chunk), atomically."""
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=png_with_settings(image, settings)))


def save_json(data: Any, path: str | os.PathLike) -> Path:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    return atomic_write(path, write)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON in ``path``; a missing or malformed file is one sentence naming ``what`` it should be."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UnofluxError(f"{what} {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise UnofluxError(f"{what} {str(path)!r} is a folder; give a JSON file") from None
    except OSError as err:  # unreadable: permissions, a broken disk
        raise UnofluxError(f"{what} {str(path)!r} cannot be read ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UnofluxError(f"{what} {str(path)!r} is not valid JSON ({err})") from None

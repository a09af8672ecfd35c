"""A pydicom pixel-data decoder plugin: grey JPEG Lossless through imagecodecs (libjpeg-turbo 3).

Most XA cine archives store JPEG Lossless, Process 14 (``1.2.840.10008.1.2.4.57``) or its
Selection Value 1 subset (``.70``). libjpeg-turbo 3 decodes these (sample precision 2-16 bits)
about 2x faster than gdcm and 3-4x faster than pylibjpeg-libjpeg on 512x512 8-bit frames;
lossless decoding has a single right answer, so the pixels are the same (tested against both).

The module follows pydicom 3's plugin interface (``is_available``, ``DECODER_DEPENDENCIES``
and a ``(src, runner) -> bytes`` function); :func:`register` adds it as plugin
``"imagecodecs"`` to pydicom's JPEG Lossless decoders (after gdcm and pylibjpeg in pydicom's
own order; :mod:`priormim.io_dicom` asks for it by name and falls back to the others when it
raises). It decodes grey (one sample per pixel) frames only and raises for anything else
(colour, a frame whose size or precision disagrees with the dataset), so pydicom's other plugins
take over.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DECODER_DEPENDENCIES", "PLUGIN", "SYNTAXES", "is_available", "register"]

PLUGIN = "imagecodecs"
# JPEG Lossless Process 14 and its Selection Value 1 (pydicom's ``uid.JPEGLossless`` and
# ``uid.JPEGLosslessSV1``), as plain strings so that importing this module does not import pydicom.
SYNTAXES = ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
# imagecodecs wheels bundle libjpeg-turbo >= 3 (lossless JPEG) since 2023.9.18.
DECODER_DEPENDENCIES = {syntax: ("imagecodecs>=2024.1.1",) for syntax in SYNTAXES}


def _lossless_capable() -> bool:
    try:
        import imagecodecs
    except ImportError:
        return False
    if not getattr(imagecodecs, "JPEG8", None) or not imagecodecs.JPEG8.available:
        return False
    # "libjpeg_turbo 3.1.3/8.0": lossless decoding arrived with libjpeg-turbo 3.0.
    version = imagecodecs.jpeg8_version().split()[-1].split("/")[0]
    try:
        return int(version.split(".")[0]) >= 3
    except ValueError:
        return False


def is_available(uid: str) -> bool:
    """True when imagecodecs with libjpeg-turbo >= 3 is installed and ``uid`` is JPEG Lossless."""
    return uid in SYNTAXES and _lossless_capable()


def _decode_frame(src: bytes, runner: Any) -> bytes:
    """One encoded frame -> its stored values as little-endian bytes, ``rows x columns`` samples
    in containers of ``runner.bits_allocated`` bits (what pydicom expects from a plugin)."""
    import imagecodecs

    if runner.samples_per_pixel != 1:
        raise ValueError("the imagecodecs plugin decodes grey JPEG Lossless only")
    if runner.bits_allocated not in (8, 16):
        raise ValueError(f"the imagecodecs plugin does not handle Bits Allocated {runner.bits_allocated}")
    arr = imagecodecs.jpeg8_decode(src)
    if arr.shape != (runner.rows, runner.columns):
        raise ValueError(f"decoded frame is {arr.shape}, the dataset says {(runner.rows, runner.columns)}")
    container = np.dtype("<u1" if runner.bits_allocated == 8 else "<u2")
    if arr.dtype.itemsize > container.itemsize:  # a 9-16 bit codestream in 8-bit containers
        raise ValueError(f"decoded {arr.dtype} samples do not fit Bits Allocated {runner.bits_allocated}")
    return np.ascontiguousarray(arr, dtype=container).tobytes()


def register() -> bool:
    """Add the plugin to pydicom's JPEG Lossless decoders (idempotent). True when usable."""
    from pydicom.pixels.decoders import JPEGLosslessDecoder, JPEGLosslessSV1Decoder

    for decoder in (JPEGLosslessDecoder, JPEGLosslessSV1Decoder):
        if PLUGIN in decoder.available_plugins:
            continue
        try:
            decoder.add_plugin(PLUGIN, (__name__, "_decode_frame"))
        except ValueError:  # already added, and unavailable (no imagecodecs)
            pass
    return PLUGIN in JPEGLosslessSV1Decoder.available_plugins

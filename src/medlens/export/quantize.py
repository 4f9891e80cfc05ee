"""INT8: static quantization with ONNX Runtime's tools, calibrated on validation images.

``onnxruntime.quantization.quantize_static`` with a :class:`CalibrationDataReader` that feeds
preprocessed validation batches; QDQ format, unsigned 8-bit activations, signed 8-bit weights
per channel, MinMax calibration (ONNX Runtime's defaults for CPU). The graph is first run
through ``quant_pre_process`` (shape inference and fusions) when that succeeds. Whether the
result may be used is decided by its validation macro-F1 against the eager model's, in
:mod:`medlens.export`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 256  # MinMax ranges settle long before this; more only costs time
SETTINGS = {
    "format": "QDQ",
    "activations": "QUInt8",
    "weights": "QInt8",
    "per_channel": True,
    "calibration": "MinMax",
}


def quantize_graph(
    fp32: Path,
    out: Path,
    feeds: list[dict[str, Any]],
) -> dict[str, Any]:
    """Write the INT8 graph of ``fp32`` to ``out``, calibrated on ``feeds`` (graph input dicts).

    Returns the settings used (recorded in ``export.json``).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(feeds)

    source = fp32
    pre = out.with_name(out.stem + ".pre.onnx")
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        source = pre
        preprocessed = True
    except Exception as exc:  # optional step: quantization works without it
        log.debug("quant_pre_process skipped: %s", exc)
        preprocessed = False
    quantize_static(
        str(source),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
    )
    pre.unlink(missing_ok=True)
    return {
        **SETTINGS,
        "pre_processed": preprocessed,
        "calibration_images": sum(len(next(iter(f.values()))) for f in feeds),
    }

"""Post-training INT8 quantization of repository entries (ONNX Runtime static quantization, QDQ).

An export-side tool: ``images`` reads calibration/eval folders through the server's own decode and
preprocessing, ``graph`` quantizes an ONNX graph, ``report`` measures INT8 against FP32, ``entry``
writes the new repository version; ``detector`` and ``detector_entry`` do the same for detectors
(backbone + FPN in INT8, COCO AP bound). ``serving`` (no heavy imports) says where an INT8 entry can run.
Nothing here is imported by the serving path except ``serving``.
"""

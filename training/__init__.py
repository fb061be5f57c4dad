"""convserve's offline training, export and import commands. Importing `service` first turns
ONNX Runtime's telemetry off before onnxruntime is imported (service/__init__.py)."""

import service  # noqa: F401

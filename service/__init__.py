"""convserve's service package. Importing it turns ONNX Runtime's telemetry off before
onnxruntime is imported: its Linux wheels otherwise start a telemetry client on import (a device
ID and an event store under ~/.cache/Microsoft, uploads to mobile.events.data.microsoft.com),
and a server must contact nothing it was not asked to. ORT_DISABLE_TELEMETRY set in the
environment is left as it is."""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

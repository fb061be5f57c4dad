"""Open Inference Protocol (KServe v2): schemas, binary tensor codec, handlers."""

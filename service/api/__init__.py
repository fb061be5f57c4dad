"""HTTP layer: thin routers, request parsing, the one error mapping, the metrics middleware."""

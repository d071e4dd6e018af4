"""`scl serve` behind the engine: the ASGI app (`app`), the service (`service`), request batching (`batching`), the page (`page`)."""

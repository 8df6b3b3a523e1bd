"""An OpenAI-compatible local server for one slm package (needs the `serve` extra: fastapi, uvicorn).

    from slm.runtime import Engine
    from slm.runtime.serve import serve
    serve(Engine("path/to/package"), port=8000)      # then: OpenAI(base_url="http://127.0.0.1:8000/v1")

    schemas.py  the request bodies          app.py     routes, checks, the request flow
    errors.py   OpenAI's error JSON         slots.py   KV caches shared by concurrent requests
    formats.py  response bodies, SSE        worker.py  generation on a worker thread
    server.py   uvicorn: serve(), BackgroundServer

`import runtime` does not import this package, so the runtime works without fastapi installed.
"""
from slm.runtime.serve.app import create_app
from slm.runtime.serve.server import BackgroundServer, serve

__all__ = ["BackgroundServer", "create_app", "serve"]

"""Running the app with uvicorn: `serve` (blocking, for `slm serve`) and `BackgroundServer` (a thread,
for tests, benchmarks, and programs that want a local endpoint beside their own work).

The socket is bound here, before uvicorn starts, so a taken port is one clear error, and port 0
(any free port) tells the caller which port it got.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time

import uvicorn

from slm.runtime.serve.app import create_app
from slm.core.errors import SlmError

log = logging.getLogger("slm.serve")

GRACEFUL_SHUTDOWN_S = 5.0   # on Ctrl-C, answers in progress get this long to finish; then they are cancelled


def serve(engine, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, max_queue: int = 16,
          max_concurrent: int = 2, model_id: str | None = None, log_level: str = "info") -> None:
    """Serve `engine` until Ctrl-C, as `model_id` (default: the package folder's name)."""
    model_id = model_id or engine.path.name
    app = create_app(engine, model_id=model_id, api_key=api_key, max_queue=max_queue,
                     max_concurrent=max_concurrent)
    sock = bind(host=host, port=port)
    if not is_loopback(host) and api_key is None:
        log.warning("listening on %s without --api-key: anyone who can reach this address can use the model", host)
    shown = f"[{host}]" if ":" in host else host
    print(f"slm: serving {model_id!r} at http://{shown}:{sock.getsockname()[1]}/v1 "
          f"({max_concurrent} slots, {max_queue} may wait)", flush=True)
    uvicorn.Server(_config(app, log_level=log_level, graceful_shutdown_s=GRACEFUL_SHUTDOWN_S)).run(sockets=[sock])


class BackgroundServer:
    """`with BackgroundServer(app) as server: httpx.get(server.url + "/health")`"""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 start_timeout_s: float = 30.0, graceful_shutdown_s: float = GRACEFUL_SHUTDOWN_S):
        self.app, self.host, self.port = app, host, port
        self.log_level, self.start_timeout_s, self.graceful_shutdown_s = log_level, start_timeout_s, graceful_shutdown_s
        self.url = ""

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> BackgroundServer:
        """Bind, start uvicorn on a thread, and return once it accepts connections."""
        sock = bind(host=self.host, port=self.port)
        self.port = sock.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        self._server = uvicorn.Server(_config(self.app, log_level=self.log_level,
                                              graceful_shutdown_s=self.graceful_shutdown_s))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name=f"uvicorn-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start within {self.start_timeout_s} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """What Ctrl-C does: answers in progress get `graceful_shutdown_s` to finish, then are cancelled."""
        self._server.should_exit = True
        self._thread.join(timeout=self.graceful_shutdown_s + 30)


def bind(*, host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise SlmError(f"port={port!r} is out of range; use 0..65535 (0: any free port)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise SlmError(f"host {host!r} does not resolve ({e.strerror}); use an address such as 127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise SlmError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _config(app, *, log_level: str, graceful_shutdown_s: float) -> uvicorn.Config:
    return uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=graceful_shutdown_s)

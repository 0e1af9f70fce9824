"""The TLS context every registry client verifies with, made once, off the critical path.

It is httpx's own default (``httpx.create_ssl_context()``: certifi's CA
bundle, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``), which each
``httpx.AsyncClient`` would otherwise build for itself. Loading the bundle
takes 30-45 ms, with the GIL released: the command line starts it on a
thread (``start``) while the command imports what it needs, so a command
does not wait for it at its first request, plain HTTP registries included
(a redirect may still lead to HTTPS). One context per process, shared by
every client: an ``ssl.SSLContext`` may wrap any number of connections.
"""

from __future__ import annotations

import ssl
import threading
from concurrent.futures import Future

import httpx

_lock = threading.Lock()
_made: Future[ssl.SSLContext] | None = None


def start() -> None:
    """Begin making the context on a thread, if no one has. Not before a fork:
    the child could inherit the thread's locks held, without the thread."""
    _future()


def context() -> ssl.SSLContext:
    """The shared context, once made (raising what making it raised)."""
    return _future().result()


def _future() -> Future[ssl.SSLContext]:
    global _made
    with _lock:
        if _made is None:
            _made = Future()
            # Not a daemon thread: the interpreter waits for it at exit. A daemon
            # thread still inside OpenSSL while a quick command (umount) finalized
            # the interpreter crashed it (SIGSEGV, SIGBUS).
            thread = threading.Thread(target=_make, args=(_made,), name="r8imfs-tls")
            thread.start()
        return _made


def _make(future: Future[ssl.SSLContext]) -> None:
    try:
        future.set_result(httpx.create_ssl_context())
    except BaseException as exc:  # handed to whoever asks for the context
        future.set_exception(exc)

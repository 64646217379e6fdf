"""Keep a public server's downloads out of its own network, and on time.

While a download runs in a thread under :func:`guarded_thread`, every host name that
thread resolves -- the pasted link, the pages and media URLs an extractor finds, every
redirect, every re-resolution (DNS rebinding) -- must resolve to globally reachable
addresses, and every socket read of that thread ends by the download's deadline.

Why ``socket`` is patched, once, for the whole process: yt-dlp and urllib3 both connect
through ``socket.getaddrinfo`` and read through ``socket.recv``; checking there is the
one place no extractor, redirect or fragment download can go around. The patched
functions only act in a thread that entered :func:`guarded_thread` (a thread-local
flag), so every other HTTP client in the process (Gradio's, the Hub's) is unaffected,
and concurrent downloads each keep their own deadline.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Optional

from whisper_zh.errors import DownloadError, UnsafeURLError


def is_url(text: str) -> bool:
    """True for anything with a URL scheme (``https://``, ``file://``, ``ftp://``...), so
    that unsupported schemes reach :func:`check_url` and get refused by name rather than
    being treated as a missing local file."""
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text.strip()))


# Not globally reachable, yet called global by Python 3.11's ``is_global``: the IETF
# protocol assignments (192.0.0.9, 192.0.0.10 and the rest of 192.0.0.0/24), and
# multicast. Addresses inside NAT64, 6to4 and Teredo are judged by the IPv4 they carry.
_NOT_PUBLIC = (ipaddress.ip_network("192.0.0.0/24"), ipaddress.ip_network("224.0.0.0/4"),
               ipaddress.ip_network("ff00::/8"))


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _is_internal(address: str) -> bool:
    """True unless ``address`` is globally reachable: loopback, private, link-local,
    carrier-grade NAT (100.64.0.0/10, where 100.100.100.200 is a cloud metadata
    service), documentation, benchmarking, reserved and multicast ranges all count as
    inside."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        carried = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if carried is None and any(ip in net for net in _NAT64):
            carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if carried is not None and _is_internal(str(carried)):
            return True
    return not ip.is_global or any(ip.version == net.version and ip in net for net in _NOT_PUBLIC)


def check_url(url: str, *, allow_private: bool = False) -> str:
    """Refuse links that would turn a public Space into a proxy into its own network.

    Only ``http``/``https`` are accepted, and every address the host resolves to must be
    globally reachable (:func:`_is_internal`): loopback, private (10/8, 172.16/12,
    192.168/16, fc00::/7), link-local (169.254/16 -- the cloud metadata service),
    carrier-grade NAT (100.64/10), multicast and reserved ranges are refused unless
    ``allow_private`` (the app's ``ALLOW_PRIVATE_URLS=1``).
    Messages name the host, never the address it resolved to.

    Returns:
        The stripped URL.

    Raises:
        UnsafeURLError: with a message naming the reason.
    """
    url = url.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise UnsafeURLError(f"only http:// and https:// links are accepted, not {parts.scheme or 'this'}://")
    host = parts.hostname
    if not host:
        raise UnsafeURLError("the link has no host name")
    if parts.username or parts.password:
        raise UnsafeURLError("links with a user name or password are not accepted")
    try:
        port = parts.port
    except ValueError:
        raise UnsafeURLError("the link has an invalid port") from None
    try:
        infos = _system_getaddrinfo(host, port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise DownloadError(f"cannot find the host {host!r}: check the link") from None
    if not allow_private and any(_is_internal(sockaddr[0]) for *_, sockaddr in infos):
        raise UnsafeURLError(_refused_host(host))
    return url


def _refused_host(host: str) -> str:
    return (f"{host} resolves to a private, loopback or link-local address; such links are refused "
            "(set ALLOW_PRIVATE_URLS=1 to allow them on a machine you trust)")


_guard = threading.local()


_system_getaddrinfo = socket.getaddrinfo


class _RefusedAddress(socket.gaierror):
    pass


def _guarded_getaddrinfo(host, port, *args, **kwargs):
    infos = _system_getaddrinfo(host, port, *args, **kwargs)
    if getattr(_guard, "active", False):
        if any(_is_internal(sockaddr[0]) for *_, sockaddr in infos):
            _guard.refused = host
            raise _RefusedAddress(socket.EAI_NONAME, f"refused to connect to {host}: not a public address")
    return infos


def _deadline_bound(recv):
    """``recv``/``recv_into`` of a socket, bounded by this thread's download deadline: a
    server that sends one byte every few seconds satisfies every per-read timeout, so
    each read may wait at most what is left of the deadline, and none starts after it."""

    @functools.wraps(recv)
    def bounded(self, *args, **kwargs):
        deadline = getattr(_guard, "deadline", None)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the download deadline has passed")
            timeout = self.gettimeout()
            if timeout is None or timeout > left:
                self.settimeout(left)
        return recv(self, *args, **kwargs)

    bounded.deadline_bound = True
    return bounded


def _install_guards() -> None:
    if socket.getaddrinfo is not _guarded_getaddrinfo:
        socket.getaddrinfo = _guarded_getaddrinfo
    for cls in (socket.socket, ssl.SSLSocket):
        for name in ("recv", "recv_into"):
            method = cls.__dict__.get(name) or getattr(cls, name)
            if not getattr(method, "deadline_bound", False):
                setattr(cls, name, _deadline_bound(method))


@contextlib.contextmanager
def guarded_thread(public_only: bool = True, deadline: Optional[float] = None):
    """While active, every host name this thread resolves -- the pasted link, pages and
    media URLs an extractor finds, each redirect, and each re-resolution (DNS rebinding)
    -- must resolve to public addresses; otherwise the connection fails before a single
    packet is sent. yt-dlp and urllib3 both connect through ``socket.getaddrinfo``, so
    the check sits there, gated per thread so that nothing else in the process is
    affected. Every socket read of this thread also ends by ``deadline``
    (``time.monotonic()``), whatever the server's pace."""
    _install_guards()
    previous = getattr(_guard, "active", False), getattr(_guard, "deadline", None)
    _guard.active, _guard.refused, _guard.deadline = public_only, None, deadline
    try:
        yield
    finally:
        _guard.active, _guard.deadline = previous

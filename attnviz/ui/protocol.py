"""A browser's side of Streamlit's protocol, without a browser: one app session over its websocket.

The load generator (``attnviz.loadtest``) drives many of these at once, so
that client browsers do not take the server's cores. What a browser does and
this does too: load ``/`` and ``/_stcore/health`` (the XSRF cookie), open ``/_stcore/stream``
with the ``streamlit`` subprotocol, send ``BackMsg.rerun_script`` with the
widget states a user changed (and the fragment the widget lives in, so a
fragment-only rerun stays one), ask for upload URLs with
``BackMsg.file_urls_request`` and PUT the file there, and fetch every image
element's media URL. Widgets are found by key or label in the
``ForwardMsg`` deltas. What it does not do: run JavaScript, draw, or load
the static bundle (a browser caches it).

Loopback only: :func:`check_loopback` refuses any other host. Every wait has
a timeout, so a stuck server ends a run with an error rather than a hang.
It lives in ``attnviz/ui`` because it imports ``streamlit.proto``.
"""
from __future__ import annotations

import asyncio
import http.client
import ipaddress
import threading
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.Common_pb2 import FileURLs, UploadedFileInfo
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

WIDGET_KINDS = {"selectbox", "slider", "radio", "multiselect", "number_input", "checkbox", "text_input",
                "text_area", "file_uploader", "button", "button_group", "download_button", "plotly_chart"}
FINISHED = {ForwardMsg.FINISHED_SUCCESSFULLY: "full", ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY: "fragment",
            ForwardMsg.FINISHED_WITH_COMPILE_ERROR: "compile_error"}
XSRF_COOKIE = "_streamlit_xsrf"
MAX_MESSAGE = 64 * 1024 * 1024


class ProtocolError(RuntimeError):
    """The server did not answer as a Streamlit app does (one sentence)."""


def check_loopback(url: str) -> tuple[str, int]:
    """(host, port) of ``url``, or ProtocolError when the host is not this machine's loopback."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "http":
        raise ProtocolError(f"Only http:// URLs on this machine are supported, not '{url}'.")
    try:
        loop = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loop = False
    if not loop:
        raise ProtocolError(f"The load test only targets this machine (127.0.0.1, ::1 or localhost), not '{host}'.")
    return host, parts.port or 80


@dataclass
class Widget:
    """A widget as the last delta that drew it describes it."""

    kind: str          # the element's oneof name: selectbox, slider, file_uploader, ...
    id: str
    label: str
    proto: Any         # the widget's own proto (options, min/max, ...)
    fragment_id: str   # "" outside a fragment

    @property
    def key(self) -> str:
        """The user key (ids of keyed widgets end in ``-<key>``); "" when the widget has none."""
        return self.id.rsplit("-", 1)[-1] if self.id.startswith("$$ID-") and self.id.count("-") >= 2 else ""


@dataclass
class RunResult:
    """What one rerun sent back, and how long it took from the request to its end."""

    kind: str                                    # full | fragment | compile_error | timeout
    seconds: float
    images: list[str] = field(default_factory=list)      # media URLs of image elements drawn
    image_bytes: int = 0                                 # bytes fetched for them
    errors: list[str] = field(default_factory=list)      # st.error bodies and exceptions
    texts: list[str] = field(default_factory=list)       # markdown / caption / info bodies (first 200)
    elements: int = 0
    messages: int = 0
    received_bytes: int = 0
    first_image_s: Optional[float] = None               # when the run's first image element arrived (s)
    _first_image_at: Optional[float] = field(default=None, repr=False)   # perf_counter of that moment


def _cookie_from(headers: list[tuple[str, str]], name: str) -> Optional[str]:
    for k, v in headers:
        if k.lower() == "set-cookie" and v.startswith(name + "="):
            return v.split(";", 1)[0].split("=", 1)[1]
    return None


class Session:
    """One user of the app: ``await open()``, then ``set(widget, value)`` / ``upload(...)``; ``close()``."""

    def __init__(self, base_url: str, pool: Executor, *, timeout: float = 120.0, fetch_media: bool = True):
        self.host, self.port = check_loopback(base_url)
        self.base_url = base_url.rstrip("/")
        self.pool, self.timeout, self.fetch_media = pool, timeout, fetch_media
        self.widgets: dict[str, Widget] = {}
        self.session_id = ""
        self.page_hash = ""
        self.query_string = ""
        self.xsrf: Optional[str] = None
        self._ws = None
        self._reader: Optional[asyncio.Task] = None
        self._run: Optional[RunResult] = None
        self._done: Optional[asyncio.Future] = None
        self._file_urls: dict[str, asyncio.Future] = {}
        self._closed = False
        self._conn: Optional[http.client.HTTPConnection] = None
        self._conn_lock = threading.Lock()

    # --- HTTP (blocking calls in the pool: loopback, small) ---------------------------
    def _http_blocking(self, method: str, path: str, body: bytes = b"", headers: Optional[dict] = None):
        # One kept-alive connection per session, as a browser keeps one: a new connection per image
        # would add the server's accept and close to every click.
        with self._conn_lock:
            for attempt in (0, 1):
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                try:
                    self._conn.request(method, path, body=body or None, headers=headers or {})
                    resp = self._conn.getresponse()
                    data = resp.read()
                    if resp.will_close:
                        self._drop_connection()
                    return resp.status, resp.getheaders(), data
                except (http.client.HTTPException, ConnectionError):
                    self._drop_connection()      # the server closed an idle connection: once more, anew
                    if attempt:
                        raise
        raise AssertionError("unreachable")

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _http(self, method: str, path: str, body: bytes = b"", headers: Optional[dict] = None):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._http_blocking, method, path, body, headers)

    async def fetch(self, path: str) -> bytes:
        """GET a path of the app (an image's media URL); ProtocolError unless it answers 200."""
        status, _, data = await self._http("GET", path)
        if status != 200:
            raise ProtocolError(f"GET {path} answered {status}.")
        return data

    def _cookie_header(self) -> dict[str, str]:
        return {"Cookie": f"{XSRF_COOKIE}={self.xsrf}"} if self.xsrf else {}

    # --- the websocket -------------------------------------------------------------
    async def open(self, query_string: str = "") -> RunResult:
        """Load the page, open the websocket and wait for the first run to finish."""
        from websockets.asyncio.client import connect
        status, _, _ = await self._http("GET", "/")
        if status != 200:
            raise ProtocolError(f"GET / answered {status}; is this a Streamlit app?")
        status, headers, _ = await self._http("GET", "/_stcore/health")   # the page's script does this first
        if status != 200:
            raise ProtocolError(f"GET /_stcore/health answered {status}; the app is not ready.")
        self.xsrf = _cookie_from(headers, XSRF_COOKIE)
        protocols = ["streamlit"] + ([self.xsrf] if self.xsrf else [])
        ws_url = f"ws://{self.host}:{self.port}/_stcore/stream"
        self._ws = await asyncio.wait_for(connect(
            ws_url, subprotocols=protocols, origin=f"http://{self.host}:{self.port}",
            additional_headers=self._cookie_header(), max_size=MAX_MESSAGE, proxy=None,
            open_timeout=self.timeout), self.timeout)
        self._reader = asyncio.create_task(self._read_loop())
        self.query_string = query_string
        return await self._rerun({}, "")

    async def close(self) -> None:
        self._closed = True
        with self._conn_lock:
            self._drop_connection()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass

    async def _read_loop(self) -> None:
        try:
            async for raw in self._ws:
                msg = ForwardMsg()
                msg.ParseFromString(raw)
                self._handle(msg, len(raw))
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # the connection dropped: whoever waits learns it now
            if self._done is not None and not self._done.done() and not self._closed:
                self._done.set_exception(ProtocolError(f"The websocket closed during a run ({exc})."))
            return
        if self._done is not None and not self._done.done() and not self._closed:
            self._done.set_exception(ProtocolError("The server closed the websocket during a run."))

    def _handle(self, msg: ForwardMsg, size: int) -> None:
        run = self._run
        if run is not None:
            run.messages += 1
            run.received_bytes += size
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.session_id = msg.new_session.initialize.session_id or self.session_id
            self.page_hash = msg.new_session.page_script_hash or self.page_hash
        elif kind == "navigation":
            self.page_hash = msg.navigation.page_script_hash or self.page_hash
        elif kind == "page_info_changed":
            self.query_string = msg.page_info_changed.query_string
        elif kind == "delta" and run is not None:
            self._delta(msg.delta, run)
        elif kind == "file_urls_response":
            fut = self._file_urls.pop(msg.file_urls_response.response_id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg.file_urls_response)
        elif kind == "script_finished":
            status = FINISHED.get(msg.script_finished)
            if status is not None and self._done is not None and not self._done.done():
                self._done.set_result(status)

    def _delta(self, delta, run: RunResult) -> None:
        if delta.WhichOneof("type") != "new_element":
            return
        el = delta.new_element
        kind = el.WhichOneof("type")
        run.elements += 1
        if kind == "imgs":
            if run._first_image_at is None:
                run._first_image_at = time.perf_counter()
            run.images.extend(i.url for i in el.imgs.imgs)
        elif kind == "alert":
            if el.alert.format == el.alert.ERROR:
                run.errors.append(el.alert.body)
            elif len(run.texts) < 200:
                run.texts.append(el.alert.body)
        elif kind == "exception":
            run.errors.append(f"{el.exception.type}: {el.exception.message}")
        elif kind == "markdown" and len(run.texts) < 200:
            run.texts.append(el.markdown.body)
        elif kind in WIDGET_KINDS:
            proto = getattr(el, kind)
            wid = getattr(proto, "id", "")
            if wid:
                self.widgets[wid] = Widget(kind, wid, getattr(proto, "label", ""), proto, delta.fragment_id)

    async def _rerun(self, states: dict[str, WidgetState], fragment_id: str) -> RunResult:
        back = BackMsg()
        cs = back.rerun_script
        cs.query_string = self.query_string
        cs.page_script_hash = self.page_hash
        if fragment_id:
            cs.fragment_id = fragment_id
        for st in states.values():
            cs.widget_states.widgets.append(st)
        loop = asyncio.get_running_loop()
        self._run = RunResult("", 0.0)
        self._done = loop.create_future()
        t0 = time.perf_counter()
        await self._ws.send(back.SerializeToString())
        try:
            kind = await asyncio.wait_for(self._done, self.timeout)
        except asyncio.TimeoutError:
            kind = "timeout"
        run, self._run = self._run, None
        run.kind = kind
        if kind == "timeout":
            run.errors.append(f"The run did not finish within {self.timeout:.0f} s.")
        if self.fetch_media:
            for url in run.images:
                if url.startswith("/"):
                    try:
                        run.image_bytes += len(await self.fetch(url))
                    except ProtocolError as exc:
                        run.errors.append(str(exc))
        run.seconds = time.perf_counter() - t0
        if run._first_image_at is not None:
            run.first_image_s = run._first_image_at - t0
        return run

    # --- widgets -------------------------------------------------------------------
    def find(self, *, key: Optional[str] = None, label: Optional[str] = None,
             kind: Optional[str] = None) -> Widget:
        """The widget with this key (or label, or kind); ProtocolError naming what was there."""
        hits = [w for w in self.widgets.values()
                if (key is None or w.key == key) and (label is None or w.label == label)
                and (kind is None or w.kind == kind)]
        if not hits:
            have = ", ".join(sorted(f"{w.kind}:{w.key or w.label}" for w in self.widgets.values()))
            raise ProtocolError(f"No widget with key={key!r} label={label!r} kind={kind!r} (have: {have}).")
        return hits[-1]   # the latest drawn

    def options(self, widget: Widget) -> list[str]:
        return list(getattr(widget.proto, "options", []))

    def state_for(self, widget: Widget, value: Any) -> WidgetState:
        """The WidgetState a browser sends when the user sets ``widget`` to ``value``."""
        st = WidgetState(id=widget.id)
        if widget.kind in ("selectbox", "radio"):
            st.string_value = str(value)          # the formatted option, as shown
        elif widget.kind == "slider":
            st.double_array_value.data.append(float(value))
        elif widget.kind == "number_input":
            st.double_value = float(value)
        elif widget.kind in ("multiselect", "button_group"):
            st.string_array_value.data.extend(str(v) for v in value)
        elif widget.kind == "checkbox":
            st.bool_value = bool(value)
        elif widget.kind in ("text_input", "text_area"):
            st.string_value = str(value)
        elif widget.kind == "button":
            st.trigger_value = True
        else:
            raise ProtocolError(f"Setting a {widget.kind} is not supported by this client.")
        return st

    async def set(self, widget: Widget, value: Any) -> RunResult:
        """Change one widget as a user would; returns the rerun it caused (a fragment's, inside one)."""
        return await self._rerun({widget.id: self.state_for(widget, value)}, widget.fragment_id)

    async def upload(self, widget: Widget, name: str, data: bytes, mime: str = "image/png") -> RunResult:
        """Ask for an upload URL, PUT the file, then rerun with the uploader's new state."""
        t0 = time.perf_counter()
        req_id = uuid.uuid4().hex
        fut = asyncio.get_running_loop().create_future()
        self._file_urls[req_id] = fut
        back = BackMsg()
        back.file_urls_request.request_id = req_id
        back.file_urls_request.session_id = self.session_id
        back.file_urls_request.file_names.append(name)
        await self._ws.send(back.SerializeToString())
        resp = await asyncio.wait_for(fut, self.timeout)
        if resp.error_msg or not resp.file_urls:
            raise ProtocolError(f"The server gave no upload URL ({resp.error_msg or 'empty answer'}).")
        urls: FileURLs = resp.file_urls[0]
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: {mime}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", **self._cookie_header()}
        if self.xsrf:
            headers["X-Xsrftoken"] = self.xsrf
        path = urls.upload_url if urls.upload_url.startswith("/") else urlsplit(urls.upload_url).path
        status, _, answer = await self._http("PUT", path, body, headers)
        if status not in (200, 204):
            raise ProtocolError(f"The upload was refused ({status}: {answer[:120]!r}).")
        st = WidgetState(id=widget.id)
        st.file_uploader_state_value.uploaded_file_info.append(
            UploadedFileInfo(name=name, size=len(data), file_id=urls.file_id, file_urls=urls))
        run = await self._rerun({widget.id: st}, widget.fragment_id)
        run.seconds = time.perf_counter() - t0    # from the first request, as the user waits
        if run._first_image_at is not None:
            run.first_image_s = run._first_image_at - t0
        return run

"""A TCP proxy that delays the server's replies: a server slower than the
busy-poll limit, for the SQL and Redis tests."""
import selectors
import socket
import threading
import time


class DelayProxy:
    """A TCP proxy on a free port that holds every server-to-client chunk for
    `delay` seconds: a server slower than the busy-poll limit."""

    def __init__(self, host, port, delay):
        self._sel = selectors.DefaultSelector()
        self._lst = socket.create_server(("127.0.0.1", 0))
        self.port = self._lst.getsockname()[1]
        self._target = (host, port)
        self._delay = delay
        self._stop = threading.Event()
        self._socks = [self._lst]
        self._sel.register(self._lst, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for key, _ in self._sel.select(0.05):
                if key.data is None:
                    client, _ = self._lst.accept()
                    upstream = socket.create_connection(self._target)
                    for s in (client, upstream):
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        self._socks.append(s)
                    self._sel.register(client, 1, (upstream, 0.0))
                    self._sel.register(upstream, 1, (client, self._delay))
                    continue
                peer, delay = key.data
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._sel.unregister(key.fileobj)
                    key.fileobj.close()
                    continue
                if delay:
                    time.sleep(delay)
                try:
                    peer.sendall(data)
                except OSError:
                    pass

    def close(self):
        self._stop.set()
        self._thread.join(5)
        for s in self._socks:
            s.close()

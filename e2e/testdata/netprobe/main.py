"""The microVM network test's agent: it tries TCP connections and reports
what happened to each, so the test can tell blocked from broken."""
import socket


def connect(targets):
    out = {}
    for host, port in targets:
        try:
            s = socket.create_connection((host, int(port)), timeout=5)
        except OSError as e:
            out["%s:%s" % (host, port)] = "refused: %s" % e
            continue
        try:
            s.settimeout(5)
            out["%s:%s" % (host, port)] = "connected: %s" % s.recv(64).decode(errors="replace")
        except OSError as e:
            out["%s:%s" % (host, port)] = "connected, then %s" % e
        finally:
            s.close()
    return out

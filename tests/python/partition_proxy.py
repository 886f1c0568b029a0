"""A TCP proxy that can partition: while CONTROL_FILE exists, nothing passes
(bytes are held, new connections hang), like a network that drops packets;
when it is removed, traffic flows again on new connections.

Usage: partition_proxy.py LISTEN_PORT UPSTREAM_PORT CONTROL_FILE
Loopback only.
"""

import os
import socket
import sys
import threading
import time

LISTEN, UPSTREAM, CONTROL = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


def cut():
    return os.path.exists(CONTROL)


def pump(src, dst, generation):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            while cut():
                time.sleep(0.05)
            if generation != current[0]:
                break  # this connection was cut: drop it when traffic flows again
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


# Connections made before a cut never carry data again.
current = [0]


def watcher():
    was_cut = False
    while True:
        now = cut()
        if now and not was_cut:
            current[0] += 1
        was_cut = now
        time.sleep(0.02)


threading.Thread(target=watcher, daemon=True).start()
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", LISTEN))
server.listen(64)
while True:
    client, _ = server.accept()
    while cut():
        time.sleep(0.05)
    upstream = socket.create_connection(("127.0.0.1", UPSTREAM))
    generation = current[0]
    threading.Thread(target=pump, args=(client, upstream, generation), daemon=True).start()
    threading.Thread(target=pump, args=(upstream, client, generation), daemon=True).start()

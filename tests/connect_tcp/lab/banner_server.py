"""A TCP service for the ConnectTCP lab: python banner_server.py PORT BANNER

Listens on 127.0.0.1:PORT; to each client it sends "BANNER\n", then echoes one
line back prefixed with "echo: ".  Prints "ready" once listening.
"""

import socket
import sys
import threading


def serve(conn, banner):
    with conn:
        conn.sendall(banner.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(b"echo: " + data)


def main():
    port, banner = int(sys.argv[1]), sys.argv[2]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, banner), daemon=True).start()


if __name__ == "__main__":
    main()

"""
Emulates systemd socket activation with Accept=true for the ConnectTCP lab:
python socket_units.py UNIT_DIR

For each NAME.socket in UNIT_DIR (ListenStream=127.0.0.1:PORT, Accept=true) it
listens on that address; for each connection it runs the ExecStart= command
line of NAME@.service (split like systemd does for simple words and '' quoting)
with the connection as stdin and stdout (StandardInput=socket,
StandardOutput=inherit).  Prints "ready PORT..." once listening.
"""

import configparser
import os
import selectors
import shlex
import socket
import subprocess
import sys


def read_unit(path):
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read(path)
    return parser


def main():
    unit_dir = sys.argv[1]
    selector = selectors.DefaultSelector()
    ports = []
    for name in sorted(os.listdir(unit_dir)):
        if not name.endswith(".socket"):
            continue
        sock_unit = read_unit(os.path.join(unit_dir, name))
        assert sock_unit["Socket"]["Accept"] == "true", name
        host, port = sock_unit["Socket"]["ListenStream"].rsplit(":", 1)
        service = read_unit(os.path.join(unit_dir, name[: -len(".socket")] + "@.service"))
        assert service["Service"]["StandardInput"] == "socket"
        assert service["Service"]["StandardOutput"] == "inherit"
        argv = shlex.split(service["Service"]["ExecStart"])
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, int(port)))
        listener.listen(16)
        selector.register(listener, selectors.EVENT_READ, argv)
        ports.append(port)
    print("ready " + " ".join(ports), flush=True)
    children = []
    while True:
        for key, _ in selector.select(timeout=1):
            conn, _ = key.fileobj.accept()
            children.append(subprocess.Popen(key.data, stdin=conn.fileno(), stdout=conn.fileno()))
            conn.close()
        children = [child for child in children if child.poll() is None]


if __name__ == "__main__":
    main()

"""`zoogate serve` under valgrind through a drain.

Keep-alive connections left idle on both event loops when SIGTERM arrives stay suspended until the
end; they must be destroyed before what they use (metrics, the log, the other loop), so valgrind
reports no invalid access and zoogate exits 0.

Usage: drain_memcheck_test.py VALGRIND ZOOGATE
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile

STARTUP_LINES = 2  # the Hub and admin listeners, printed first
IDLE_CONNECTIONS_PER_LISTENER = 3


def listening_port(line):
    # "zoogate: serving the Hub at http://127.0.0.1:PORT  (...)", "zoogate: admin at http://127.0.0.1:PORT"
    address = line.split("http://", 1)[1].split()[0]
    return int(address.rsplit(":", 1)[1])


def open_idle_connection(port, target, expected_status):
    connection = socket.create_connection(("127.0.0.1", port), timeout=60)
    connection.sendall(f"GET {target} HTTP/1.1\r\nHost: zoogate\r\n\r\n".encode())
    head = connection.recv(4096).decode("latin-1")
    if not head.startswith(f"HTTP/1.1 {expected_status}"):
        raise AssertionError(f"GET {target} answered {head[:200]!r}")
    return connection  # left open: the server keeps the session waiting for the next request


def main():
    valgrind, zoogate = sys.argv[1:3]
    with tempfile.TemporaryDirectory() as work:
        config = os.path.join(work, "zoogate.yaml")
        with open(config, "w", encoding="utf-8") as handle:
            # Nothing listens on port 9: API requests get a 502 at once and keep their connection.
            handle.write(f'listen: "127.0.0.1:0"\nadmin_listen: "127.0.0.1:0"\nio_threads: 2\n'
                         f'upstream:\n  hub_url: "https://127.0.0.1:9"\n  retries: 0\n'
                         f'cache:\n  dir: "{work}/cache"\n')
        process = subprocess.Popen([valgrind, "-q", "--error-exitcode=99", zoogate, "serve", "--config", config],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            lines = [process.stdout.readline() for _ in range(STARTUP_LINES)]
            hub_port, admin_port = (listening_port(line) for line in lines)
            idle = [open_idle_connection(hub_port, "/api/models/some/model", 502)
                    for _ in range(IDLE_CONNECTIONS_PER_LISTENER)]
            idle += [open_idle_connection(admin_port, "/healthz", 200) for _ in range(IDLE_CONNECTIONS_PER_LISTENER)]
            process.send_signal(signal.SIGTERM)
            _, errors = process.communicate(timeout=240)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        for connection in idle:
            connection.close()
    if process.returncode != 0:
        print(errors[-6000:], file=sys.stderr)
        print(f"FAIL: zoogate under valgrind exited {process.returncode}", file=sys.stderr)
        return 1
    print(f"ok: {len(idle)} idle connections through a drain, no invalid access")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``dihya dev`` checks its fixed ports the way the services will bind them."""

from __future__ import annotations

import socket

from cli.commands.services import port_free


def _time_wait_on_a_closed_server() -> int:
    """A port nothing listens on any more, whose server closed a connection first: the
    server's side of it stays in TIME_WAIT (a minute on Linux), as after a stopped service."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = int(server.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server's side closes first: it is the one left in TIME_WAIT
    client.recv(1)  # the FIN
    client.close()
    server.close()
    return port


def test_a_port_left_in_time_wait_is_free() -> None:
    assert port_free(_time_wait_on_a_closed_server())


def test_a_port_someone_listens_on_is_not() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert not port_free(int(server.getsockname()[1]))

"""Socket operations on real loopback sockets: sock_recv, sock_recv_into, sock_recvfrom,
sock_recvfrom_into, sock_sendall, sock_sendto, sock_connect, sock_accept, sock_sendfile; blocking
sockets refused; cancelled operations leave the socket usable."""

from __future__ import annotations

import asyncio
import io
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ferroloop
from ferro_helpers import on_both_loops, outcome

BIG = bytes(range(256)) * 16384  # 4 MiB: more than a socket buffer, so sends go in pieces

pytestmark = pytest.mark.timeout(30)  # a lost wake-up must fail fast, not hang the suite


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


async def recv_exactly(event_loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = await event_loop.sock_recv(sock, min(65536, n - len(chunks)))
        if not chunk:
            break
        chunks += chunk
    return bytes(chunks)


# -- TCP --------------------------------------------------------------------------------------


def test_accept_connect_sendall_recv(loop: ferroloop.Loop, listener: socket.socket) -> None:
    async def main() -> tuple[bytes, bytes, Any]:
        client = socket.socket()
        client.setblocking(False)
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        assert await loop.sock_connect(client, listener.getsockname()) is None
        server, peer = await accept
        try:
            assert server.gettimeout() == 0  # accepted sockets are non-blocking
            assert peer == client.getsockname()
            assert await loop.sock_sendall(client, b"hello") is None
            got = await loop.sock_recv(server, 100)
            await loop.sock_sendall(server, b"back")
            back = await loop.sock_recv(client, 100)
            return got, back, peer
        finally:
            server.close()
            client.close()

    got, back, _ = loop.run_until_complete(main())
    assert (got, back) == (b"hello", b"back")


def test_sendall_of_a_large_buffer_in_both_directions(
    loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = tcp_pair

    async def main() -> tuple[bytes, bytes]:
        send = asyncio.ensure_future(loop.sock_sendall(client, BIG))
        send_back = asyncio.ensure_future(loop.sock_sendall(server, BIG[::-1]))
        received = await recv_exactly(loop, server, len(BIG))
        received_back = await recv_exactly(loop, client, len(BIG))
        await asyncio.gather(send, send_back)
        return received, received_back

    received, received_back = loop.run_until_complete(main())
    assert received == BIG
    assert received_back == BIG[::-1]


def test_sendall_of_a_bytearray_larger_than_the_socket_buffer_and_of_a_str(
    any_loop: asyncio.AbstractEventLoop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    # The first send takes part of the buffer; the rest must follow from the next byte. A str
    # is refused, as socket.send refuses it.
    client, server = tcp_pair
    payload = bytearray(BIG)

    async def main() -> bytes:
        send = asyncio.ensure_future(any_loop.sock_sendall(client, payload))
        received = await recv_exactly(any_loop, server, len(payload))
        await send
        return received

    assert any_loop.run_until_complete(main()) == BIG
    with pytest.raises(TypeError, match="bytes-like object is required"):
        any_loop.run_until_complete(any_loop.sock_sendall(client, "text"))  # type: ignore[arg-type]


def test_sock_recv_into(loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcp_pair
    buffer = bytearray(10)

    async def main() -> int:
        reading = asyncio.ensure_future(loop.sock_recv_into(server, buffer))
        await asyncio.sleep(0.001)  # the read waits for data
        await loop.sock_sendall(client, b"abcdef")
        return await reading

    assert loop.run_until_complete(main()) == 6
    assert buffer == b"abcdef\0\0\0\0"


def test_sock_recv_into_a_memoryview_slice(loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcp_pair
    buffer = bytearray(b"...........")
    client.send(b"xyz")
    n = loop.run_until_complete(loop.sock_recv_into(server, memoryview(buffer)[4:7]))
    assert n == 3
    assert buffer == b"....xyz...."


def test_sock_recv_returns_empty_bytes_at_eof(
    loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = tcp_pair
    client.shutdown(socket.SHUT_WR)
    assert loop.run_until_complete(loop.sock_recv(server, 100)) == b""


def test_sock_recv_on_a_reset_connection_raises(
    loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = tcp_pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    server.send(b"unread")  # unread data + close with linger 0 => RST
    client.close()
    with pytest.raises(ConnectionResetError):
        loop.run_until_complete(loop.sock_recv(server, 100))


def test_sock_connect_resolves_host_names_like_the_stdlib(loop: ferroloop.Loop, listener: socket.socket) -> None:
    port = listener.getsockname()[1]

    async def main() -> tuple[str, int]:
        client = socket.socket()
        client.setblocking(False)
        try:
            await loop.sock_connect(client, ("localhost", port))
            server, _ = await loop.sock_accept(listener)
            server.close()
            return client.getpeername()
        finally:
            client.close()

    assert loop.run_until_complete(main()) == ("127.0.0.1", port)


def test_sock_connect_to_a_closed_port_raises_connection_refused(loop: ferroloop.Loop) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        address = probe.getsockname()  # closed when the block ends: nobody listens there
    client = socket.socket()
    client.setblocking(False)
    try:
        with pytest.raises(ConnectionRefusedError):
            loop.run_until_complete(loop.sock_connect(client, address))
    finally:
        client.close()


def test_sock_connect_over_ipv6_loopback(loop: ferroloop.Loop) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support in this Python")
    try:
        server_sock = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")
    server_sock.setblocking(False)
    client = socket.socket(socket.AF_INET6)
    client.setblocking(False)

    async def main() -> bytes:
        accept = asyncio.ensure_future(loop.sock_accept(server_sock))
        await loop.sock_connect(client, server_sock.getsockname()[:2])
        conn, _ = await accept
        with conn:
            await loop.sock_sendall(client, b"v6")
            return await loop.sock_recv(conn, 10)

    try:
        assert loop.run_until_complete(main()) == b"v6"
    finally:
        client.close()
        server_sock.close()


def test_many_concurrent_connections(loop: ferroloop.Loop, listener: socket.socket) -> None:
    count = 50

    async def serve() -> None:
        for _ in range(count):
            conn, _ = await loop.sock_accept(listener)
            data = await loop.sock_recv(conn, 100)
            await loop.sock_sendall(conn, data.upper())
            conn.close()

    async def client(i: int) -> bytes:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, listener.getsockname())
            await loop.sock_sendall(sock, f"msg{i}".encode())
            return await loop.sock_recv(sock, 100)
        finally:
            sock.close()

    async def main() -> list[bytes]:
        server = asyncio.ensure_future(serve())
        replies = await asyncio.gather(*(client(i) for i in range(count)))
        await server
        return replies

    assert loop.run_until_complete(main()) == [f"MSG{i}".encode() for i in range(count)]


# -- UDP --------------------------------------------------------------------------------------


def test_udp_sendto_recvfrom(loop: ferroloop.Loop, udp_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = udp_pair

    async def main() -> tuple[Any, Any]:
        receiving = asyncio.ensure_future(loop.sock_recvfrom(b, 1024))
        await asyncio.sleep(0.001)  # the receive waits for a datagram
        sent = await loop.sock_sendto(a, b"datagram", b.getsockname())
        return sent, await receiving

    sent, (data, address) = loop.run_until_complete(main())
    assert sent == len(b"datagram")
    assert data == b"datagram"
    assert address == a.getsockname()


def test_udp_recvfrom_into(loop: ferroloop.Loop, udp_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = udp_pair
    buffer = bytearray(16)
    a.sendto(b"0123456789", b.getsockname())
    nbytes, address = loop.run_until_complete(loop.sock_recvfrom_into(b, buffer))
    assert (nbytes, address) == (10, a.getsockname())
    assert buffer[:10] == b"0123456789"
    a.sendto(b"abcdef", b.getsockname())
    nbytes, _ = loop.run_until_complete(loop.sock_recvfrom_into(b, buffer, 3))
    assert nbytes == 3
    assert buffer[:3] == b"abc"


def test_udp_recvfrom_truncates_to_bufsize(loop: ferroloop.Loop, udp_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = udp_pair
    a.sendto(b"0123456789", b.getsockname())
    data, _ = loop.run_until_complete(loop.sock_recvfrom(b, 4))
    assert data == b"0123"


def test_udp_many_datagrams_keep_boundaries(
    loop: ferroloop.Loop, udp_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = udp_pair

    async def main() -> list[bytes]:
        for i in range(100):
            await loop.sock_sendto(a, f"d{i}".encode(), b.getsockname())
        return [(await loop.sock_recvfrom(b, 100))[0] for _ in range(100)]

    assert loop.run_until_complete(main()) == [f"d{i}".encode() for i in range(100)]


# -- sendfile ---------------------------------------------------------------------------------


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "payload.bin"
    path.write_bytes(BIG)
    return path


def test_sock_sendfile_sends_the_whole_file(
    loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket], data_file: Path
) -> None:
    client, server = tcp_pair

    async def main(file: Any) -> tuple[int, bytes]:
        sending = asyncio.ensure_future(loop.sock_sendfile(client, file))
        received = await recv_exactly(loop, server, len(BIG))
        return await sending, received

    with data_file.open("rb") as file:
        sent, received = loop.run_until_complete(main(file))
        assert file.tell() == len(BIG)  # the file position moves past what was sent
    assert sent == len(BIG)
    assert received == BIG


def test_sock_sendfile_with_offset_and_count(
    loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket], data_file: Path
) -> None:
    client, server = tcp_pair
    with data_file.open("rb") as file:
        sent = loop.run_until_complete(loop.sock_sendfile(client, file, 1000, 5000))
        assert file.tell() == 6000
    assert sent == 5000
    assert loop.run_until_complete(recv_exactly(loop, server, 5000)) == BIG[1000:6000]


def test_sock_sendfile_falls_back_for_objects_without_a_file_descriptor(
    loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = tcp_pair
    payload = b"in memory" * 1000
    sent = loop.run_until_complete(loop.sock_sendfile(client, io.BytesIO(payload)))
    assert sent == len(payload)
    assert loop.run_until_complete(recv_exactly(loop, server, len(payload))) == payload


def test_sock_sendfile_without_fallback_raises_when_unavailable(
    loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, _ = tcp_pair
    with pytest.raises(asyncio.SendfileNotAvailableError):
        loop.run_until_complete(loop.sock_sendfile(client, io.BytesIO(b"x"), fallback=False))


def test_sock_sendfile_bad_arguments_match_the_stdlib(tmp_path: Path) -> None:
    text_file = tmp_path / "text.txt"
    text_file.write_text("text")

    def scenario(event_loop: asyncio.AbstractEventLoop) -> list[Any]:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket()
        udp.setblocking(False)
        tcp.setblocking(False)
        try:
            with text_file.open("r") as text, text_file.open("rb") as binary:
                run = event_loop.run_until_complete
                return [
                    outcome(lambda: run(event_loop.sock_sendfile(udp, binary))),
                    outcome(lambda: run(event_loop.sock_sendfile(tcp, text))),
                    outcome(lambda: run(event_loop.sock_sendfile(tcp, binary, -1))),
                    outcome(lambda: run(event_loop.sock_sendfile(tcp, binary, 0, 0))),
                    outcome(lambda: run(event_loop.sock_sendfile(tcp, binary, "0"))),
                ]
        finally:
            udp.close()
            tcp.close()

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib
    assert ours[:2] == [("raised", ValueError), ("raised", ValueError)]


# -- bad inputs -------------------------------------------------------------------------------

SOCK_OPS: dict[str, Any] = {
    "sock_recv": lambda lp, s: lp.sock_recv(s, 10),
    "sock_recv_into": lambda lp, s: lp.sock_recv_into(s, bytearray(10)),
    "sock_recvfrom": lambda lp, s: lp.sock_recvfrom(s, 10),
    "sock_recvfrom_into": lambda lp, s: lp.sock_recvfrom_into(s, bytearray(10)),
    "sock_sendall": lambda lp, s: lp.sock_sendall(s, b"x"),
    "sock_sendto": lambda lp, s: lp.sock_sendto(s, b"x", ("127.0.0.1", 9)),
    "sock_connect": lambda lp, s: lp.sock_connect(s, ("127.0.0.1", 9)),
    "sock_accept": lambda lp, s: lp.sock_accept(s),
    "sock_sendfile": lambda lp, s: lp.sock_sendfile(s, io.BytesIO(b"data")),
}


@pytest.mark.parametrize("operation", sorted(SOCK_OPS))
def test_a_blocking_socket_is_refused_in_debug_mode_like_the_stdlib(operation: str) -> None:
    def scenario(event_loop: asyncio.AbstractEventLoop) -> Any:
        event_loop.set_debug(True)
        sock = socket.socket()  # blocking
        try:
            operation_coro = SOCK_OPS[operation](event_loop, sock)
            return outcome(lambda: event_loop.run_until_complete(operation_coro))
        finally:
            sock.close()

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib == ("raised", ValueError)


def test_blocking_socket_error_message(loop: ferroloop.Loop) -> None:
    loop.set_debug(True)
    with socket.socket() as sock:
        with pytest.raises(ValueError, match="the socket must be non-blocking"):
            loop.run_until_complete(loop.sock_recv(sock, 10))


@pytest.mark.parametrize("operation", sorted(set(SOCK_OPS) - {"sock_sendfile"}))
def test_an_ssl_socket_is_refused_like_the_stdlib(operation: str) -> None:
    context = ssl.create_default_context()

    def scenario(event_loop: asyncio.AbstractEventLoop) -> Any:
        with context.wrap_socket(socket.socket(), do_handshake_on_connect=False, server_hostname="localhost") as sock:
            sock.setblocking(False)
            operation_coro = SOCK_OPS[operation](event_loop, sock)
            return outcome(lambda: event_loop.run_until_complete(operation_coro))

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib == ("raised", TypeError)


@pytest.mark.parametrize(
    "call",
    [
        lambda lp, s: lp.sock_recv(s, "10"),
        lambda lp, s: lp.sock_recv_into(s, b"immutable"),
        lambda lp, s: lp.sock_sendall(s, "text, not bytes"),
        lambda lp, s: lp.sock_recv("not a socket", 10),
        lambda lp, s: lp.sock_connect(s, "not an address"),
    ],
    ids=["recv-str-size", "recv_into-bytes", "sendall-str", "recv-not-socket", "connect-bad-addr"],
)
def test_wrong_argument_types_fail_like_the_stdlib(call: Any, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcp_pair
    server.send(b"ready")  # so a read would not wait

    def scenario(event_loop: asyncio.AbstractEventLoop) -> Any:
        return outcome(lambda: event_loop.run_until_complete(call(event_loop, client)))

    stdlib, ours = on_both_loops(scenario)
    assert ours == stdlib
    assert ours[0] == "raised"


# -- cancellation -----------------------------------------------------------------------------


def test_a_cancelled_sock_recv_leaves_the_socket_usable(
    loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = tcp_pair

    async def main() -> bytes:
        pending = asyncio.ensure_future(loop.sock_recv(server, 100))
        await asyncio.sleep(0.001)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert not loop._has_watcher(server.fileno())  # the read watcher is gone
        await loop.sock_sendall(client, b"after cancel")
        return await loop.sock_recv(server, 100)

    assert loop.run_until_complete(main()) == b"after cancel"


def test_a_timed_out_sock_recv_leaves_the_socket_usable(
    loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = tcp_pair

    async def main() -> bytes:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(server, 100), 0.01)
        client.send(b"later")
        return await loop.sock_recv(server, 100)

    assert loop.run_until_complete(main()) == b"later"


def test_a_cancelled_sock_accept_leaves_the_listener_usable(loop: ferroloop.Loop, listener: socket.socket) -> None:
    async def main() -> bool:
        pending = asyncio.ensure_future(loop.sock_accept(listener))
        await asyncio.sleep(0.001)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        client = socket.socket()
        client.setblocking(False)
        try:
            await loop.sock_connect(client, listener.getsockname())
            conn, _ = await loop.sock_accept(listener)
            conn.close()
            return True
        finally:
            client.close()

    assert loop.run_until_complete(main()) is True


def test_a_cancelled_sock_sendall_leaves_the_socket_usable(
    loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = tcp_pair

    async def main() -> bool:
        # Fill the pipe so sendall has to wait, then cancel it.
        pending = asyncio.ensure_future(loop.sock_sendall(client, BIG * 4))
        await asyncio.sleep(0.01)
        assert not pending.done()
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert not loop._has_watcher(client.fileno(), True)
        # Drain what was sent, then the socket still works both ways.
        while True:
            try:
                if not server.recv(1 << 20):
                    break
            except BlockingIOError:
                break
        await loop.sock_sendall(server, b"reply")
        return await loop.sock_recv(client, 100) == b"reply"

    assert loop.run_until_complete(main()) is True


def test_a_cancelled_sock_recvfrom_leaves_the_socket_usable(
    loop: ferroloop.Loop, udp_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = udp_pair

    async def main() -> bytes:
        pending = asyncio.ensure_future(loop.sock_recvfrom(b, 100))
        await asyncio.sleep(0.001)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await loop.sock_sendto(a, b"after", b.getsockname())
        return (await loop.sock_recvfrom(b, 100))[0]

    assert loop.run_until_complete(main()) == b"after"


def test_sock_ops_on_a_closed_loop_raise(loop: ferroloop.Loop, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = tcp_pair
    loop.close()
    coro = loop.sock_recv(client, 10)
    try:
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            loop.run_until_complete(coro)
    finally:
        coro.close()


def test_a_sock_sendall_cancelled_midway_sent_a_prefix_of_its_data(
    any_loop: asyncio.AbstractEventLoop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    # What reached the peer before the cancellation is the data's beginning, with nothing
    # skipped or repeated, and a later sendall's bytes follow it directly.
    client, server = tcp_pair
    data = bytes(i % 251 for i in range(len(BIG) * 4))

    async def main() -> tuple[bytes, bytes]:
        pending = asyncio.ensure_future(any_loop.sock_sendall(client, data))
        await asyncio.sleep(0.01)
        assert not pending.done()
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        reader = asyncio.ensure_future(recv_exactly(any_loop, server, len(data) + 5))
        await any_loop.sock_sendall(client, b"after")
        client.shutdown(socket.SHUT_WR)
        received = await reader
        return received[:-5], received[-5:]

    sent, tail = any_loop.run_until_complete(main())
    assert 0 < len(sent) < len(data)
    assert sent == data[: len(sent)]
    assert tail == b"after"

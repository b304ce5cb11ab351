"""A TCP echo server and its clients, written with the loop's low-level sock_* operations.

The server listens on 127.0.0.1 on a port the OS picks. `loop.sock_accept` waits for a
connection, `loop.sock_recv` for data, `loop.sock_sendall` sends it back. Three clients connect
concurrently with `loop.sock_connect`; one sends a megabyte, so it sends and receives at the
same time (otherwise both sides could fill their socket buffers and wait for each other). When
every client has its echo, the server task is cancelled and the program ends.
"""

import asyncio
import socket


async def handle_connection(conn: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    with conn:
        while data := await loop.sock_recv(conn, 65536):
            await loop.sock_sendall(conn, data)


async def serve(listener: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as connections:  # cancelling serve() cancels them too
        while True:
            conn, _address = await loop.sock_accept(listener)  # conn is non-blocking already
            connections.create_task(handle_connection(conn))


async def echo(address: tuple[str, int], message: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)  # the sock_* operations refuse blocking sockets
        await loop.sock_connect(sock, address)
        sending = asyncio.create_task(loop.sock_sendall(sock, message))
        received = bytearray()
        while len(received) < len(message):
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                break
            received += chunk
        await sending
    return bytes(received)


async def main() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        server = asyncio.create_task(serve(listener))
        messages = [b"hello", b"ferroloop", b"x" * 1_000_000]
        replies = await asyncio.gather(*(echo(listener.getsockname(), m) for m in messages))
        for message, reply in zip(messages, replies):
            intact = reply == message
            print(f"sent {len(message)} bytes ({message[:9]!r}...), echo intact: {intact}")
        server.cancel()
        try:
            await server
        except asyncio.CancelledError:
            print("server stopped")


if __name__ == "__main__":
    asyncio.run(main())

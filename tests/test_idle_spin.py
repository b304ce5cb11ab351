"""The spin before a blocking wait (`src/idle_spin.rs`): set by FERROLOOP_SPIN_US per loop
made; never longer than the wait it comes before; a signal that arrives during it still
interrupts the loop, as it interrupts the blocking wait; a bad value is a clear ValueError.
Each case runs in a fresh interpreter, so the variable is read as a program would set it."""

from __future__ import annotations

import textwrap

import pytest

from ferro_helpers import run_python

# A spin far longer than any wait below: whatever ends a wait early ends it during the spin.
LONG_SPIN_US = "400000"


def run_with_spin(spin_us: str, program: str) -> str:
    done = run_python("-c", textwrap.dedent(program), env_extra={"FERROLOOP_SPIN_US": spin_us})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_timer_is_not_late_for_the_spin() -> None:
    out = run_with_spin(
        LONG_SPIN_US,
        """
        import asyncio, time, ferroloop
        async def main():
            start = time.monotonic()
            await asyncio.sleep(0.02)
            return time.monotonic() - start
        print(ferroloop.run(main()))
        """,
    )
    # The 400 ms spin is cut to the 20 ms the timer leaves: the sleep ends well before it.
    assert 0.02 <= float(out) < 0.3


def test_a_signal_during_the_spin_interrupts_the_loop() -> None:
    # SIGALRM after 50 ms, while the loop spins (400 ms) before a 5 s wait; its handler
    # raises. Without running the handlers after the spin, the loop would sleep the 5 s.
    out = run_with_spin(
        LONG_SPIN_US,
        """
        import asyncio, signal, time, ferroloop
        class Alarm(Exception):
            pass
        def on_alarm(signum, frame):
            raise Alarm
        signal.signal(signal.SIGALRM, on_alarm)
        loop = ferroloop.new_event_loop()
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        try:
            loop.run_until_complete(asyncio.sleep(5))
        except Alarm:
            print("alarm", time.monotonic() - start)
        finally:
            loop.close()
        """,
    )
    word, seconds = out.split()
    assert word == "alarm"
    assert float(seconds) < 2.5


@pytest.mark.parametrize("spin_us", ["0", "50", LONG_SPIN_US])
def test_round_trips_are_answered_whatever_the_spin(spin_us: str) -> None:
    # A datagram echo server and a client on one loop: each reply ends the client's wait
    # (during the spin or the sleep after it) and nothing is lost or late.
    out = run_with_spin(
        spin_us,
        """
        import asyncio, socket, time, ferroloop
        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport
            def datagram_received(self, data, addr):
                self.transport.sendto(data, addr)
        async def main():
            loop = asyncio.get_running_loop()
            server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(server.get_extra_info("sockname"))
            start = time.monotonic()
            replies = []
            for i in range(200):
                await loop.sock_sendall(sock, b"ping %d" % i)
                replies.append(await loop.sock_recv(sock, 100))
            took = time.monotonic() - start
            sock.close()
            server.close()
            assert replies == [b"ping %d" % i for i in range(200)], replies
            return took
        print(ferroloop.run(main()))
        """,
    )
    assert float(out) < 5


@pytest.mark.parametrize("value", ["fast", "-5", "1.5", ""])
def test_a_bad_value_is_a_value_error_naming_the_variable(value: str) -> None:
    done = run_python(
        "-c",
        "import ferroloop\ntry:\n    ferroloop.new_event_loop()\nexcept ValueError as e:\n    print(e)\n",
        env_extra={"FERROLOOP_SPIN_US": value},
    )
    assert done.returncode == 0, done.stderr
    assert "FERROLOOP_SPIN_US must be a whole number of microseconds" in done.stdout
    assert f'got "{value}"' in done.stdout

//! The spin before a blocking wait. When the loop has nothing to run it polls epoll without
//! blocking for a short while before it sleeps in it: waking a sleeping thread costs tens of
//! microseconds, far more when its virtual CPU has halted, and the peer of a request/response
//! exchange usually answers sooner than that. On this project's 2-vCPU VM a 50 us spin took
//! the UDP echo with ferroloop at both ends from 53–62k to 175–185k round trips/s, and the
//! Protocol echo 1 KiB from 80k to 218k. The price is up to the spin's length of CPU time
//! each time the loop goes idle. `FERROLOOP_SPIN_US` sets it per loop made (0 turns it off).
//!
//! Loop thread, with the GIL released during the spin.

use std::io;

use crate::clock::monotonic_ns;
use crate::sys::{Event, Poller};

/// The environment variable that sets the spin, in microseconds.
pub const SPIN_ENV: &str = "FERROLOOP_SPIN_US";
const DEFAULT_SPIN_US: u64 = 50;

/// The spin's length in nanoseconds, from `FERROLOOP_SPIN_US` (default 50 us), or what is
/// wrong with the variable.
pub fn configured_ns() -> Result<u64, String> {
    let Some(value) = std::env::var_os(SPIN_ENV) else {
        return Ok(DEFAULT_SPIN_US * 1000);
    };
    value
        .to_str()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|us| us.saturating_mul(1000))
        .ok_or_else(|| {
            format!("{SPIN_ENV} must be a whole number of microseconds (0 turns the spin off), got {value:?}")
        })
}

/// Poll without blocking until `poller` reports events or `limit_ns` has passed; the number
/// of events (0: none came).
pub fn spin(poller: &Poller, events: &mut Vec<Event>, limit_ns: u64) -> io::Result<usize> {
    let start = monotonic_ns();
    loop {
        let found = poller.wait(events, Some(0.0))?;
        if found > 0 || monotonic_ns() - start >= limit_ns {
            return Ok(found);
        }
        std::hint::spin_loop();
    }
}

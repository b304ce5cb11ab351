//! ferroloop's native core: an asyncio event loop in Rust.
//!
//! This file only registers the module; see `event_loop.rs` for the loop itself and
//! `docs/ARCHITECTURE.md` for how a call travels through it.
//!
//! Each class's `module` is where its public name lives, which is what `__module__`, reprs of
//! the class, tracebacks and pickle's lookup show: `ferroloop` for `Handle` and
//! `TimerHandle`, which the package exports (`ferroloop.Handle`, as asyncio's handles are
//! `asyncio.Handle`), and `ferroloop._core` for every class that is an implementation detail
//! behind a Python wrapper (the loop's and the transports' cores, `SockWaiter`, `TlsRecords`).

pub mod blocking;
pub mod buffers;
pub mod callback_context;
pub mod callback_identity;
pub mod clock;
pub mod errors;
pub mod event_loop;
pub mod fastcall;
pub mod fd_watchers;
pub mod fork_guard;
pub mod gil_cell;
pub mod handle_memory;
pub mod handle_pool;
pub mod handles;
pub mod idle_spin;
pub mod instrument;
pub mod ready;
pub mod sock_ops;
pub mod sock_waiters;
pub mod socket_owner;
pub mod stats;
pub mod subclass_methods;
pub mod support;
pub mod sys;
pub mod task_factory;
pub mod task_table;
pub mod threadsafe_handle;
pub mod timers;
pub mod tls_records;
pub mod trace;
pub mod transports;
pub mod write_buffer;

use pyo3::prelude::*;

#[pymodule(gil_used = true)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::LoopCore>()?;
    fastcall::install(&m.py().get_type::<event_loop::LoopCore>())?;
    m.add_class::<handles::Handle>()?;
    handle_memory::install(&m.py().get_type::<handles::Handle>())?;
    m.add_class::<handles::TimerHandle>()?;
    m.add_class::<sock_waiters::SockWaiter>()?;
    m.add_class::<transports::stream::StreamCore>()?;
    m.add_class::<transports::pipe::ReadPipeCore>()?;
    m.add_class::<transports::datagram::DatagramCore>()?;
    m.add_class::<transports::pipe::WritePipeCore>()?;
    m.add_class::<tls_records::TlsRecords>()?;
    Ok(())
}

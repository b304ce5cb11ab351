//! Transports: the per-event halves of asyncio's transport objects. Each Rust core is wrapped
//! by a thin Python `asyncio.Transport` subclass (`python/ferroloop/_transports.py`), so that
//! `isinstance(transport, asyncio.Transport)` holds as libraries expect.

pub mod common;
pub mod datagram;
pub mod datagram_addresses;
pub mod pipe;
pub mod stream;
pub mod stream_feed;
pub mod write_side;

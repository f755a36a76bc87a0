//! Client SDK for RunAgent agents, following `docs/sdk-contract.md` of the
//! RunAgent-in-Go repository: `run` over REST, `run_stream` over WebSocket,
//! decoding of structured strings, one [`Error`] type with the contract's
//! codes, and retries with full-jitter backoff. With `runagent server`:
//! background runs (`start_run`, `get_run`, `wait_run`, `cancel_run`), a
//! re-joinable stream over Server-Sent Events (`run_stream_resumable`,
//! `join_stream`), and per-user persistent memory (`Config::user_id`,
//! `Config::persistent_memory`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), runagent::Error> {
//! let client = runagent::Client::new(runagent::Config {
//!     agent_id: "AGENT-ID".into(), entrypoint_tag: "add".into(), local: true, ..Default::default() })?;
//! let sum = client.run(vec![40.into(), 2.into()], Default::default()).await?;
//! # Ok(()) }
//! ```
#![allow(clippy::result_large_err)] // Error carries the contract's public fields by value

pub mod blocking;
mod client;
pub mod decode;
mod error;
mod resumable;
pub mod retry;
mod runs;

pub use client::{Client, Config, RunStream, DEFAULT_BASE_URL, DEFAULT_LOCAL_HOST, DEFAULT_LOCAL_PORT, DEFAULT_TIMEOUT};
pub use decode::{decode_data, decode_structured};
pub use error::{Code, Error};
pub use resumable::ResumableStream;
pub use retry::RetryPolicy;
pub use runs::{Multitask, Run, RunOptions, RunStatus};
pub use serde_json::{Map, Value};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_runs;

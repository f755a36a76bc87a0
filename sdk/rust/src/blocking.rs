//! A blocking wrapper around [`crate::Client`], with its own Tokio runtime.
use crate::{Config, Error, Run, RunOptions, RunStream};
use futures_util::StreamExt;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// A blocking client. Do not use it from inside an async runtime.
#[derive(Debug, Clone)]
pub struct Client {
    rt: Arc<tokio::runtime::Runtime>,
    inner: crate::Client,
}

impl Client {
    pub fn new(cfg: Config) -> Result<Client, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(crate::Code::Internal, format!("cannot start a runtime: {e}")))?;
        Ok(Client { rt: Arc::new(rt), inner: crate::Client::new(cfg)? })
    }

    /// See [`crate::Client::run`].
    pub fn run(&self, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Value, Error> {
        self.rt.block_on(self.inner.run(args, kwargs))
    }

    /// See [`crate::Client::run_stream`]. The stream is an iterator; dropping
    /// it closes the WebSocket.
    pub fn run_stream(&self, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Stream, Error> {
        let s = self.rt.block_on(self.inner.run_stream(args, kwargs))?;
        Ok(Stream { rt: self.rt.clone(), inner: s })
    }
}

/// A blocking stream of chunks (see [`RunStream`] for the items).
#[derive(Debug)]
pub struct Stream {
    rt: Arc<tokio::runtime::Runtime>,
    inner: RunStream,
}

impl Stream {
    pub fn invocation_id(&self) -> Option<&str> {
        self.inner.invocation_id()
    }
}

impl Iterator for Stream {
    type Item = Result<Value, Error>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rt.block_on(self.inner.next())
    }
}

impl Client {
    /// The agent id.
    pub fn agent_id(&self) -> &str {
        self.inner.agent_id()
    }

    /// A client for another entrypoint, sharing the runtime.
    pub fn with_tag(&self, tag: &str) -> Result<Client, Error> {
        Ok(Client { rt: self.rt.clone(), inner: self.inner.with_tag(tag)? })
    }
}

impl Client {
    /// See [`crate::Client::start_run`].
    pub fn start_run(&self, args: Vec<Value>, kwargs: Map<String, Value>, opts: RunOptions) -> Result<Run, Error> {
        self.rt.block_on(self.inner.start_run(args, kwargs, opts))
    }

    /// See [`crate::Client::get_run`].
    pub fn get_run(&self, run_id: &str) -> Result<Run, Error> {
        self.rt.block_on(self.inner.get_run(run_id))
    }

    /// See [`crate::Client::wait_run`].
    pub fn wait_run(&self, run_id: &str, timeout: Duration) -> Result<Run, Error> {
        self.rt.block_on(self.inner.wait_run(run_id, timeout))
    }

    /// See [`crate::Client::cancel_run`].
    pub fn cancel_run(&self, run_id: &str) -> Result<Run, Error> {
        self.rt.block_on(self.inner.cancel_run(run_id))
    }

    /// See [`crate::Client::run_stream_resumable`]. The stream is an
    /// iterator; dropping it closes the connection (the run goes on).
    pub fn run_stream_resumable(&self, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<ResumableStream, Error> {
        let s = self.rt.block_on(self.inner.run_stream_resumable(args, kwargs))?;
        Ok(ResumableStream { rt: self.rt.clone(), inner: s })
    }

    /// See [`crate::Client::join_stream`].
    pub fn join_stream(&self, run_id: &str, last_event_id: Option<&str>) -> Result<ResumableStream, Error> {
        let s = self.rt.block_on(self.inner.join_stream(run_id, last_event_id))?;
        Ok(ResumableStream { rt: self.rt.clone(), inner: s })
    }
}

/// A blocking re-joinable stream (see [`crate::ResumableStream`] for the
/// items and the accessors).
#[derive(Debug)]
pub struct ResumableStream {
    rt: Arc<tokio::runtime::Runtime>,
    inner: crate::ResumableStream,
}

impl ResumableStream {
    pub fn run_id(&self) -> Option<String> {
        self.inner.run_id()
    }
    pub fn invocation_id(&self) -> Option<String> {
        self.inner.invocation_id()
    }
    pub fn last_event_id(&self) -> Option<String> {
        self.inner.last_event_id()
    }
    pub fn total_chunks(&self) -> Option<u64> {
        self.inner.total_chunks()
    }
    pub fn reconnects(&self) -> u32 {
        self.inner.reconnects()
    }
}

impl Iterator for ResumableStream {
    type Item = Result<Value, Error>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rt.block_on(self.inner.next())
    }
}

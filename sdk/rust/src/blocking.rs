//! A blocking wrapper around [`crate::Client`], with its own Tokio runtime.
use crate::{Config, Error, RunStream};
use futures_util::StreamExt;
use serde_json::{Map, Value};
use std::sync::Arc;

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

//! Delivering commit statuses to the forge over HTTPS: the outbox is drained
//! oldest first; a network failure or 5xx stops the drain (order is kept and
//! it is retried later); 401/403/404 are configuration problems, reported
//! with the repository and token file; other 4xx drop the one status. The
//! requests are `ferry_signer::forge`'s (through `report::request_for`).

use std::path::PathBuf;
use std::time::Duration;

use ferry_signer::forge::{without_url, Token};

use crate::config::{Forge, ForgeTarget};
use crate::report::{self, CommitStatus, Outbox};
use crate::state::StateError;

/// The forge's answer to one status, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Network trouble or 5xx: keep it, retry later.
    Retry(String),
    /// Credentials or repository wrong: keep it, tell the operator.
    Misconfigured(String),
    /// The forge will never accept this status: drop it.
    Rejected(String),
}

/// What a drain of the outbox achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    pub delivered: usize,
    pub dropped: usize,
    /// Why the drain stopped early, if it did.
    pub stopped: Option<Delivery>,
}

/// A forge client for one repository.
#[derive(Debug, Clone)]
pub struct ForgeClient {
    client: reqwest::Client,
    forge: Forge,
    api_url: String,
    repository: String,
    token_file: PathBuf,
}

impl ForgeClient {
    pub fn new(config: &ForgeTarget) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("the TLS backend initialises");
        Self {
            client,
            forge: config.forge,
            api_url: config.api_url.clone(),
            repository: config.repository.clone(),
            token_file: config.token_file.clone(),
        }
    }

    /// Posts one status. The token is read from its file for each send, so a
    /// rotated credential is picked up, and it is never logged.
    pub async fn send(&self, status: &CommitStatus) -> Delivery {
        let path = &self.token_file;
        let token = match std::fs::read_to_string(path) {
            Ok(t) => match Token::new(&t) {
                Ok(token) => token,
                Err(_) => {
                    return Delivery::Misconfigured(format!(
                        "token file {} is empty or holds more than one line",
                        path.display()
                    ))
                }
            },
            Err(e) => {
                return Delivery::Misconfigured(format!("cannot read token file {}: {e}", path.display()))
            }
        };
        let request = report::request_for(self.forge, &self.api_url, &self.repository, &token, status);
        let mut builder = self.client.post(&request.url).json(&request.body);
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => return Delivery::Retry(format!("cannot reach {}: {}", self.api_url, without_url(&e))),
        };
        let code = response.status().as_u16();
        let token_file = self.token_file.display();
        match code {
            200..=299 => Delivery::Delivered,
            401 | 403 => Delivery::Misconfigured(format!(
                "the forge refused the token (HTTP {code}) for repository {}: check the token in {token_file} and its permission to write commit statuses",
                self.repository
            )),
            404 => Delivery::Misconfigured(format!(
                "repository {} or commit {} not found at {} (HTTP 404): check report.repository and the token in {token_file}",
                self.repository, status.commit, self.api_url
            )),
            408 | 429 | 500..=599 => Delivery::Retry(format!("the forge answered HTTP {code}")),
            _ => Delivery::Rejected(format!("the forge rejected the status (HTTP {code})")),
        }
    }

    /// Delivers waiting statuses oldest first until the outbox is empty or a
    /// delivery must wait.
    pub async fn drain(&self, outbox: &Outbox) -> Result<Drain, StateError> {
        let mut drain = Drain {
            delivered: 0,
            dropped: 0,
            stopped: None,
        };
        loop {
            let queued = match outbox.peek() {
                Ok(Some(q)) => q,
                Ok(None) => return Ok(drain),
                Err(StateError::Corrupt { .. }) => {
                    drain.dropped += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match self.send(&queued.status).await {
                Delivery::Delivered => {
                    outbox.remove(queued.seq)?;
                    drain.delivered += 1;
                }
                Delivery::Rejected(_) => {
                    outbox.remove(queued.seq)?;
                    drain.dropped += 1;
                }
                other => {
                    drain.stopped = Some(other);
                    return Ok(drain);
                }
            }
        }
    }
}

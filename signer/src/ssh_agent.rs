//! Signing releases with a key held by `ssh-agent` (`--ssh-agent`): the private
//! key never leaves the agent, so a hardware key asks for its touch there. The
//! agent protocol is `ssh-agent-client-rs`'s; choosing the key and checking
//! what comes back is ours.

use std::path::{Path, PathBuf};

use ssh_key::{HashAlg, PublicKey};

use crate::sshsig::{self, GitSigner, SignError};

/// Why no agent key could be used.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("--ssh-agent needs a running ssh-agent, but SSH_AUTH_SOCK is not set: start one with `eval $(ssh-agent)` and `ssh-add` your key")]
    NoSocket,
    #[error("cannot talk to ssh-agent at {socket}: {reason}")]
    Connect { socket: PathBuf, reason: String },
    #[error("ssh-agent at {socket} holds no keys: add the release key with `ssh-add`")]
    Empty { socket: PathBuf },
    #[error("ssh-agent at {socket} holds {count} keys ({fingerprints}): choose one with --key PUBKEY_FILE")]
    Ambiguous {
        socket: PathBuf,
        count: usize,
        fingerprints: String,
    },
    #[error("ssh-agent at {socket} does not hold the key {fingerprint} from {file}: add it with `ssh-add`")]
    NotHeld {
        socket: PathBuf,
        fingerprint: String,
        file: PathBuf,
    },
    #[error(
        "cannot read the public key {file}: {reason} (expected an OpenSSH public key such as id_ed25519.pub)"
    )]
    PublicKey { file: PathBuf, reason: String },
}

/// A key in `ssh-agent`, identified by its public half.
#[derive(Debug, Clone)]
pub struct AgentKey {
    socket: PathBuf,
    public_key: PublicKey,
}

impl AgentKey {
    /// Picks the agent key at `SSH_AUTH_SOCK`: the one in `public_key_file`, or
    /// the only key the agent holds.
    pub fn from_env(public_key_file: Option<&Path>) -> Result<Self, AgentError> {
        let socket = std::env::var_os("SSH_AUTH_SOCK")
            .filter(|s| !s.is_empty())
            .ok_or(AgentError::NoSocket)?;
        Self::connect(Path::new(&socket), public_key_file)
    }

    /// Picks the key from the agent listening on `socket`.
    pub fn connect(socket: &Path, public_key_file: Option<&Path>) -> Result<Self, AgentError> {
        let wanted = public_key_file
            .map(|file| {
                let bad = |reason: String| AgentError::PublicKey {
                    file: file.to_owned(),
                    reason,
                };
                let text = std::fs::read_to_string(file).map_err(|e| bad(e.to_string()))?;
                PublicKey::from_openssh(text.trim()).map_err(|e| bad(e.to_string()))
            })
            .transpose()?;
        let held: Vec<PublicKey> = client(socket)?
            .list_all_identities()
            .map_err(|e| connect_error(socket, e))?
            .into_iter()
            .filter_map(|identity| match identity {
                ssh_agent_client_rs::Identity::PublicKey(key) => Some(key.into_owned()),
                ssh_agent_client_rs::Identity::Certificate(_) => None,
            })
            .collect();
        let public_key = match (wanted, public_key_file) {
            (Some(want), Some(file)) => held
                .into_iter()
                .find(|k| k.key_data() == want.key_data())
                .ok_or_else(|| AgentError::NotHeld {
                    socket: socket.to_owned(),
                    fingerprint: want.fingerprint(HashAlg::Sha256).to_string(),
                    file: file.to_owned(),
                })?,
            _ => match held.len() {
                0 => {
                    return Err(AgentError::Empty {
                        socket: socket.to_owned(),
                    })
                }
                1 => held.into_iter().next().expect("one key"),
                count => {
                    return Err(AgentError::Ambiguous {
                        socket: socket.to_owned(),
                        count,
                        fingerprints: held
                            .iter()
                            .map(|k| format!("{} {}", k.algorithm(), k.fingerprint(HashAlg::Sha256)))
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            },
        };
        Ok(Self {
            socket: socket.to_owned(),
            public_key,
        })
    }

    /// `SHA256:…` fingerprint of the key.
    pub fn fingerprint(&self) -> String {
        self.public_key.fingerprint(HashAlg::Sha256).to_string()
    }
}

impl GitSigner for AgentKey {
    fn public_key(&self) -> PublicKey {
        self.public_key.clone()
    }

    fn sign_git(&self, payload: &[u8]) -> Result<String, SignError> {
        let name = format!("ssh-agent key {}", self.fingerprint());
        sshsig::sign_git_with(&self.public_key, &name, payload, |data| {
            // RSA keys are asked for rsa-sha2-512 by the client library.
            client(&self.socket)
                .map_err(|e| SignError::Agent(e.to_string()))?
                .sign(&self.public_key, data)
                .map_err(|e| SignError::Agent(format!("{name} refused to sign ({e})")))
        })
    }
}

fn client(socket: &Path) -> Result<ssh_agent_client_rs::Client, AgentError> {
    ssh_agent_client_rs::Client::connect(socket).map_err(|e| connect_error(socket, e))
}

fn connect_error(socket: &Path, e: ssh_agent_client_rs::Error) -> AgentError {
    let reason = match &e {
        ssh_agent_client_rs::Error::AgentCommunicationError(io) => io.to_string(),
        other => other.to_string(),
    };
    AgentError::Connect {
        socket: socket.to_owned(),
        reason,
    }
}

//! Integration tests for ferry-signer against the reference tools: real git
//! (`commit -S`, `verify-commit`) and real OpenSSH `ssh-keygen`. Built as one
//! test binary to keep link time down.

mod common;

mod approvals;
mod cli;
mod differential;
mod fleet;
mod interop;
mod key_types;
mod mirror;
mod receipts;
mod reference;
mod refusals;

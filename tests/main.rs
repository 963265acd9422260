//! Ferry's end-to-end suites: what drives both programs together or holds
//! the documentation to the code, beside the tests each crate keeps of its
//! own code. `ferry-agent` runs in a throwaway systemd against real git,
//! Nix, binary caches and a forge (deploys with approvals, metrics, reboots
//! and secrets; a fleet of four agents that the real `ferry-signer` rolls
//! out to), and the reference pages, guides' snippets and operations guide
//! are checked against the parser, the binaries and the metrics, and the
//! documentation's CI workflows against its security baseline. One binary
//! to keep link time down; the fixtures are in `ferry_test_support`.

mod common;

mod deploy;
mod fleet;
mod metrics;
mod reference;
mod snippets;
mod workflows;

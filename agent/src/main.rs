//! `ferry-agent`: not built yet (see the README's status). It exits non-zero
//! so nothing mistakes it for a working agent.

fn main() -> std::process::ExitCode {
    eprintln!("ferry-agent: not implemented yet; only ferry-signer is usable in this version");
    std::process::ExitCode::from(2)
}

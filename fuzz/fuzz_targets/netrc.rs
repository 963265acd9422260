//! netrc (`cache.netrc_file`, Nix's own format): parsing never panics, an
//! error names a line of the file, every parsed entry renders to a line that
//! parses back to the same entry, and a host's lookup finds the first entry
//! naming it, else `default`.
#![no_main]
use ferry_agent::io::cache::credentials::{Netrc, NetrcEntry};
use libfuzzer_sys::fuzz_target;

/// One entry as a netrc line; empty values are left out, as a file would.
fn render(entry: &NetrcEntry) -> String {
    let mut line = match &entry.machine {
        Some(m) => format!("machine {m}"),
        None => "default".to_owned(),
    };
    if !entry.login.is_empty() {
        line.push_str(&format!(" login {}", entry.login));
    }
    if !entry.password.is_empty() {
        line.push_str(&format!(" password {}", entry.password.as_str()));
    }
    line
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let netrc = match Netrc::parse(text) {
        Ok(n) => n,
        Err(e) => {
            assert!(e.line >= 1 && e.line <= text.lines().count().max(1));
            // The problem quotes at most 40 characters of the file.
            assert!(e.problem.chars().count() < 200, "{}", e.problem);
            return;
        }
    };
    for entry in &netrc.entries {
        for word in [
            entry.machine.as_deref().unwrap_or("x"),
            &entry.login,
            &entry.password,
        ] {
            assert!(!word.contains('#') && !word.chars().any(char::is_whitespace));
        }
        if let Some(m) = &entry.machine {
            assert!(!m.is_empty() && !m.chars().any(|c| c.is_ascii_uppercase()));
        }
    }
    // Rendered one entry a line, the file reads back the same.
    let rendered: Vec<String> = netrc.entries.iter().map(render).collect();
    let again = Netrc::parse(&rendered.join("\n")).expect("rendered entries parse");
    assert_eq!(again, netrc);
    for entry in &netrc.entries {
        let Some(machine) = &entry.machine else {
            continue;
        };
        let found = netrc.lookup(machine).expect("a named host is found");
        assert_eq!(found.machine.as_deref(), Some(machine.as_str()));
        let first = netrc
            .entries
            .iter()
            .find(|e| e.machine.as_ref() == Some(machine))
            .unwrap();
        assert!(std::ptr::eq(found, first), "the first entry naming a host wins");
        // Host names match without regard to case.
        let upper = netrc.lookup(&machine.to_ascii_uppercase()).unwrap();
        assert!(std::ptr::eq(upper, first));
    }
    let default = netrc.entries.iter().find(|e| e.machine.is_none());
    let unnamed = netrc.lookup("\u{0}no such host");
    assert_eq!(unnamed.map(|e| e as *const _), default.map(|e| e as *const _));
});

//! A host clock years off, for the agent alone (libfaketime in front of
//! `ferry-agent once` inside the testbed; nothing else's clock moves): five
//! years ahead, a release valid for 30 days is refused as stale and the
//! status shows the host's clock; once the clock is right, the same release
//! deploys without a new one. Six years behind, a release from the host's
//! future deploys, and the agent says the clock looks wrong.

use super::World;
use ferry_test_support::nix::Behaviour;

/// `ferry-agent once` with the clock moved by `offset` (libfaketime's
/// `+5y`, `-6y`).
fn once_at(w: &World, offset: &str) -> (bool, String) {
    let out = w.bed.exec(&[
        "faketime",
        "-f",
        offset,
        super::AGENT,
        "--config",
        "/etc/ferry/agent.toml",
        "once",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_clock_years_off_misfires_nothing_and_says_so() {
    let w = World::new(&[("b", Behaviour::Succeed), ("c", Behaviour::Succeed)]);
    let release = w.release_expiring("b", Some(chrono::Duration::days(30)));

    // Five years ahead: stale, with the clock in the words; nothing changes.
    let (ok, text) = once_at(&w, "+5y");
    assert!(!ok, "{text}");
    assert!(text.contains("by this host's clock, 20"), "{text}");
    assert_eq!(w.running(), w.systems["current"]);
    let said = w.status_of(&release);
    assert_eq!(said.len(), 1, "{said:?}");
    assert_eq!(said[0].0, "failure");
    assert!(
        said[0].1.starts_with("stale: release 1 expired ") && said[0].1.contains("(this host's clock: 20"),
        "{said:?}"
    );
    // Judged again, not said again.
    let (ok, _) = once_at(&w, "+5y");
    assert!(!ok);
    assert_eq!(w.status_of(&release).len(), 1);

    // NTP sets it right: the same release deploys.
    let (ok, text) = w.once();
    assert!(ok && text.contains("deployed"), "{text}");
    assert_eq!(w.running(), w.systems["b"]);
    assert_eq!(w.status_of(&release).last().unwrap().0, "success");

    // Six years behind: a release from this host's future deploys, and the
    // agent says the clock looks wrong.
    let next = w.release("c");
    let (ok, text) = once_at(&w, "-6y");
    assert!(ok && text.contains("deployed"), "{text}");
    let journal = w.journal("SYSLOG_IDENTIFIER=ferry-agent");
    assert!(
        journal.contains("this host's clock looks wrong: release 2 was created at "),
        "{journal}"
    );
    assert_eq!(w.running(), w.systems["c"]);
    assert_eq!(w.status_of(&next).last().unwrap().0, "success");
}

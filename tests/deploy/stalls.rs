//! A binary cache that stalls in the middle of a NAR, in the testbed: the
//! agent's relay cuts it off within its progress window (64 KiB in every
//! 30 s) and names the cache, the release stays `realising` and is retried
//! (an `error` status once the fault persists), nothing switches, and the
//! release deploys once the cache serves again. It used to end in a
//! permanent `error: … build of '…' failed` after Nix's own five-minute
//! stall timeout, naming neither the stall nor the cache.

use super::*;

#[test]
fn a_cache_stalling_mid_nar_is_retried_and_the_release_deploys_once_it_recovers() {
    let mut w = World::new(&[("b", Behaviour::Succeed)]);
    // Past `report.error_after`, a fault is said: at once here.
    w.set_config("forge = \"gitea\"", "forge = \"gitea\"\nerror_after = \"0s\"");
    let url = w.faulty_cache(NarFault::HalfThenSilence).url();
    w.start_service();
    let rb = w.release("b");
    wait_until(&w, 120, "the stall to be reported", || {
        w.status_of(&rb).iter().any(|(s, _)| s != "pending")
    });
    let said = w.status_of(&rb);
    assert_eq!(said[1].0, "error", "{said:?}");
    assert!(
        said[1].1.starts_with(&format!(
            "error: binary cache {url} stalled mid-download; retrying since "
        )),
        "{said:?}"
    );
    let journal = w.journal("_SYSTEMD_UNIT=ferry-agent.service");
    assert!(
        journal.contains(&format!("binary cache {url} stalled sending nar/"))
            && journal.contains("less than 65536 bytes in 30s; cut off"),
        "{journal}"
    );
    assert!(w.switch_log().is_empty(), "nothing switched");
    assert_eq!(w.status_json()["in_progress"]["phase"], "realising");

    // The cache recovers: the next retry deploys, once.
    w.faulty_cache.as_ref().unwrap().set(NarFault::None);
    wait_until(&w, 120, "b to be deployed once the cache recovers", || {
        w.status_of(&rb).iter().any(|(s, _)| s == "success")
    });
    let said: Vec<String> = w.status_of(&rb).into_iter().map(|(s, _)| s).collect();
    assert_eq!(said, ["pending", "error", "pending", "success"]);
    assert_eq!(w.running(), w.systems["b"]);
    assert_eq!(w.switch_log().len(), 1);
}

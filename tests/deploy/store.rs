//! A full store, in the testbed: `/nix/store` on a small file system of its
//! own (an overlay whose writes land on a tmpfs with a size limit), filled
//! while Nix realises a closure. The status says the store is full, nothing
//! switches, and the first retry after space is freed deploys.

use super::*;

/// Inside the testbed, `/nix/store` from now on writes to a tmpfs of
/// `size` (what is in the store stays visible through the overlay).
fn small_store(w: &World, size: &str) {
    let script = format!(
        "set -e; mkdir -p /run/small; mount -t tmpfs -o size={size} tmpfs /run/small; \
         mkdir /run/small/upper /run/small/work; \
         mount -t overlay overlay -o lowerdir=/nix/store,upperdir=/run/small/upper,workdir=/run/small/work /nix/store"
    );
    let out = w.bed.exec(&["sh", "-c", &script]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_store_full_while_realising_is_said_and_the_release_deploys_once_space_is_freed() {
    let mut w = World::new(&[("b", Behaviour::Succeed)]);
    // Past `report.error_after`, a fault is said: at once here.
    w.set_config("forge = \"gitea\"", "forge = \"gitea\"\nerror_after = \"0s\"");
    // Room for the preflight's reserve (512 MiB) and the closure.
    small_store(&w, "600m");
    w.faulty_cache(NarFault::Hold);
    w.start_service();
    let rb = w.release("b");
    wait_until(&w, 120, "Nix to ask the cache for a NAR", || {
        w.faulty_cache.as_ref().unwrap().nar_requests() > 0
    });
    // The preflight passed; now the store fills up, and the NAR arrives.
    let fill = w.bed.exec(&["dd", "if=/dev/zero", "of=/run/small/fill", "bs=1M"]);
    assert!(
        String::from_utf8_lossy(&fill.stderr).contains("No space left on device"),
        "{}",
        String::from_utf8_lossy(&fill.stderr)
    );
    w.faulty_cache.as_ref().unwrap().set(NarFault::None);
    wait_until(&w, 120, "the status to say the store is full", || {
        w.status_of(&rb).iter().any(|(s, _)| s != "pending")
    });
    let said = w.status_of(&rb);
    assert_eq!(said[0].0, "pending", "{said:?}");
    assert_eq!(said[1].0, "error", "{said:?}");
    assert!(
        said[1]
            .1
            .starts_with("error: not enough space in /nix/store for the closure; free some (nix-collect-garbage); retrying since "),
        "{said:?}"
    );
    let journal = w.journal("_SYSTEMD_UNIT=ferry-agent.service");
    assert!(journal.contains("No space left on device"), "{journal}");
    assert!(w.switch_log().is_empty(), "nothing switched");
    assert_eq!(w.status_json()["in_progress"]["phase"], "realising");

    // Space is freed: a retry deploys, once.
    std::fs::remove_file(w.bed.host_path("/run/small/fill")).unwrap();
    wait_until(&w, 120, "b to be deployed once space is freed", || {
        w.status_of(&rb).iter().any(|(s, _)| s == "success")
    });
    let said: Vec<String> = w.status_of(&rb).into_iter().map(|(s, _)| s).collect();
    assert_eq!(said, ["pending", "error", "pending", "success"]);
    assert_eq!(w.running(), w.systems["b"]);
    assert_eq!(w.switch_log().len(), 1);
}

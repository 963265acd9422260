//! Reboots in a maintenance window, and deploy windows, in the testbed: the
//! agent asks the testbed's systemd to reboot, the harness sees it go down
//! for a reboot and boots the same overlay again as the machine's next boot
//! (pointing `/run/booted-system` where a boot loader would), and the agent
//! confirms what booted. Windows are written around the testbed's wall
//! clock (it shares this machine's time zone), so they are open, or closed,
//! right now.

use std::time::{Duration, Instant};

use chrono::{DateTime, Local, Timelike};

use super::*;

/// A window of every day from `from` to `from + minutes`, at minute
/// precision, on this machine's wall clock.
fn window_at(from: DateTime<Local>, minutes: i64) -> String {
    let hm = |t: DateTime<Local>| format!("{:02}:{:02}", t.hour(), t.minute());
    format!("{}-{}", hm(from), hm(from + chrono::Duration::minutes(minutes)))
}

/// The reboot policy `in-window` with a window open from this minute for
/// two minutes: web1's moment in it is less than two minutes away.
fn reboot_now(w: &World) -> String {
    let window = window_at(Local::now(), 2);
    w.set_config(
        "[health]\n",
        &format!("[reboot]\npolicy = \"in-window\"\nwindow = [\"{window}\"]\n[health]\n"),
    );
    window
}

/// Runs `once` (each second, bounded) until the testbed goes down for a
/// reboot; returns what the runs said.
fn once_until_reboot(w: &mut World) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut said = String::new();
    while !w.bed.went_down_for_reboot() {
        assert!(Instant::now() < deadline, "no reboot within 180s:\n{said}");
        said += &w.once().1;
        std::thread::sleep(Duration::from_secs(1));
    }
    said
}

fn statuses(w: &World, commit: &str) -> Vec<(String, String)> {
    w.status_of(commit)
}

/// A release with a new kernel, inside the window: rebooted into, once,
/// and confirmed after the next boot. First the reboot request is refused
/// by systemd, so the agent ends right after recording that it reboots and
/// before a request took effect (what a kill -9 at that instant leaves):
/// the next run requests it. The run that requests it is then killed by
/// the reboot itself (right after the request). Exactly one reboot and one
/// final status either way.
#[test]
fn a_release_needing_a_reboot_reboots_in_the_window_once_and_reports_it() {
    let mut w = World::new(&[("newkernel", Behaviour::Succeed)]);
    reboot_now(&w);
    // systemd refuses a manual start of reboot.target until this goes.
    let refuse = "/run/systemd/system/reboot.target.d/refuse.conf";
    std::fs::create_dir_all(w.bed.host_path("/run/systemd/system/reboot.target.d")).unwrap();
    std::fs::write(w.bed.host_path(refuse), "[Unit]\nRefuseManualStart=yes\n").unwrap();
    assert!(w.bed.exec(&["systemctl", "daemon-reload"]).status.success());

    let commit = w.release("newkernel");
    let (ok, out) = w.once();
    assert!(
        ok && out.contains("release 1 installed; rebooting into it at"),
        "{out}"
    );
    assert_eq!(w.running(), w.systems["newkernel"]);
    assert_eq!(w.status_json()["in_progress"]["phase"], "awaiting-reboot");
    // Until the moment, then the refused request: recorded, not rebooted.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (ok, out) = w.once();
        if !ok {
            assert!(out.contains("reboot.target"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "no reboot attempt within 180s: {out}");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(!w.bed.went_down_for_reboot());
    assert_eq!(w.status_json()["in_progress"]["phase"], "rebooting");
    std::fs::remove_file(w.bed.host_path(refuse)).unwrap();
    assert!(w.bed.exec(&["systemctl", "daemon-reload"]).status.success());

    once_until_reboot(&mut w);
    w.bed.next_boot(Duration::from_secs(60), None);
    let (ok, out) = w.once();
    assert!(ok && out.contains("deployed"), "{out}");
    assert_eq!(w.link("/run/booted-system"), w.systems["newkernel"]);
    let said = statuses(&w, &commit);
    let descriptions: Vec<&str> = said.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(descriptions[0], "deploying release 1 to web1", "{said:?}");
    assert!(
        descriptions[1].starts_with("release 1 installed; reboot at"),
        "{said:?}"
    );
    assert_eq!(
        &descriptions[2..],
        ["rebooting into release 1", "web1 runs release 1 (rebooted)"]
    );
    assert_eq!(said.last().unwrap().0, "success");
    let status = w.status_json();
    assert_eq!(status["last_outcome"]["result"], "success");
    assert!(status["in_progress"].is_null(), "{status}");
    // Nothing more: no second reboot, no second final status.
    let (ok, out) = w.once();
    assert!(ok && out.contains("up to date"), "{out}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!w.bed.went_down_for_reboot(), "a second reboot");
    assert_eq!(statuses(&w, &commit).len(), 4);
}

/// The boot loader falls back to the old generation: the agent reports a
/// failure naming what booted, and its state says so.
#[test]
fn a_reboot_into_another_generation_is_a_failure_naming_it() {
    let mut w = World::new(&[("newkernel", Behaviour::Succeed)]);
    reboot_now(&w);
    let commit = w.release("newkernel");
    let (ok, out) = w.once();
    assert!(ok, "{out}");
    once_until_reboot(&mut w);
    let old = w.systems["current"].clone();
    w.bed.next_boot(Duration::from_secs(60), Some(&old));
    let (ok, out) = w.once();
    assert!(
        !ok && out.contains(&format!(
            "release 1 did not boot (boot loader fallback, or another generation chosen): booted {old}"
        )),
        "{out}"
    );
    let (state, description) = statuses(&w, &commit).pop().unwrap();
    assert_eq!(state, "failure");
    assert!(description.contains("boot loader fallback"), "{description}");
    let status = w.status_json();
    assert_eq!(status["last_outcome"]["result"], "failed");
    assert!(
        status["last_outcome"]["description"]
            .as_str()
            .unwrap()
            .contains(&old),
        "{status}"
    );
}

/// Outside the deploy window a release waits, with one pending status saying
/// until when; outside the maintenance window a release needing a reboot
/// is installed and the host does not reboot.
#[test]
fn outside_the_windows_releases_wait_and_hosts_do_not_reboot() {
    let mut w = World::new(&[("newkernel", Behaviour::Succeed)]);
    let later = Local::now() + chrono::Duration::hours(12);
    let closed = window_at(later, 1);
    w.set_config("[switch]\n", &format!("[switch]\nwindow = [\"{closed}\"]\n"));
    let commit = w.release("newkernel");
    for _ in 0..3 {
        let (ok, out) = w.once();
        assert!(ok && out.contains("waits for the deploy window"), "{out}");
    }
    assert_eq!(w.running(), w.systems["current"]);
    let said = statuses(&w, &commit);
    assert_eq!(said.len(), 1, "{said:?}");
    assert_eq!(said[0].0, "pending");
    assert!(
        said[0]
            .1
            .starts_with("release 1 waits for the deploy window (opens ")
            && said[0]
                .1
                .contains(&format!("{:02}:{:02}", later.hour(), later.minute())),
        "{said:?}"
    );

    // No deploy window; a maintenance window twelve hours away.
    w.set_config(
        "[health]\n",
        &format!("[reboot]\npolicy = \"in-window\"\nwindow = [\"{closed}\"]\n[health]\n"),
    );
    let (ok, out) = w.once();
    assert!(
        ok && out.contains("release 1 installed; rebooting into it at"),
        "{out}"
    );
    assert_eq!(w.running(), w.systems["newkernel"]);
    let (ok, _) = w.once();
    assert!(ok);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!w.bed.went_down_for_reboot());
    assert_eq!(w.status_json()["in_progress"]["phase"], "awaiting-reboot");
}

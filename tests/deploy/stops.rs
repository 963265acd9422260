//! `systemctl stop` and `restart` of `ferry-agent run` in the middle of a
//! deploy, in the testbed: systemd sends SIGTERM to the agent's whole
//! cgroup, so Nix and the health commands it runs are stopped with it.
//! Whatever phase the deploy is in, the agent ends by itself (systemd never
//! has to kill it: the unit's stop timeout is far below what the held step
//! would take), nothing of it is left running, the next start resumes the
//! phase, and the release switches once and ends once, as success.

use super::*;

/// The phase `state.json` records for the deploy in flight.
fn phase(w: &World) -> String {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.bed.host_path("/var/lib/ferry-agent/state.json")).unwrap())
            .unwrap();
    state["in_flight"]["phase"].as_str().unwrap_or("none").to_owned()
}

fn systemctl(w: &World, args: &[&str]) -> String {
    let mut argv = vec!["systemctl"];
    argv.extend(args);
    let out = w.bed.exec(&argv);
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Stops the agent and checks the stop was the agent's own: it exited 0 on
/// SIGTERM (systemd records `Result=timeout` when it has to SIGKILL a unit
/// past `TimeoutStopSec`), and nothing of the unit runs any more (a unit
/// whose cgroup still holds a process is not `inactive`).
fn stop(w: &World) {
    systemctl(w, &["stop", "ferry-agent.service"]);
    let show = systemctl(w, &["show", "-p", "ActiveState,Result", "ferry-agent.service"]);
    let show: BTreeMap<&str, &str> = show.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(
        (show["ActiveState"], show["Result"]),
        ("inactive", "success"),
        "the agent ended by itself on SIGTERM: {show:?}\n{}",
        w.journal("_SYSTEMD_UNIT=ferry-agent.service")
    );
}

/// The statuses release `r` received: deploying once, success once, nothing
/// else (no error, no failure, no rollback).
fn deployed_once(w: &World, r: &str) {
    let said: Vec<String> = w.status_of(r).into_iter().map(|(s, _)| s).collect();
    assert_eq!(said, ["pending", "success"], "{:?}", w.status_of(r));
}

/// A file inside the testbed that holds a step while it exists.
fn hold(w: &World, name: &str) -> std::path::PathBuf {
    let path = w.bed.host_path(&format!("/run/ferry-test/{name}"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "").unwrap();
    path
}

/// A world whose cache holds NARs back while told to, and whose `c`
/// switch and health check wait while a hold file exists.
fn world() -> World {
    let mut w = World::new(&[
        ("b", Behaviour::Succeed),
        (
            "c",
            Behaviour::Activation(
                "touch /run/ferry-test/switching; while [ -e /run/ferry-test/hold-switch ]; do sleep 0.1; done",
            ),
        ),
        ("breaks", Behaviour::StartsFailingUnit),
    ]);
    // The check passes at once, unless held: then it says so and waits.
    w.set_health_commands(
        "['test ! -e /run/ferry-test/hold-check || { touch /run/ferry-test/checking; \
         while [ -e /run/ferry-test/hold-check ]; do sleep 0.1; done; }']",
    );
    w.faulty_cache(NarFault::None);
    w
}

/// [`world`] with the agent running as a service whose stop timeout is
/// far below what a held step takes and far above what a stop needs.
fn service() -> World {
    let w = world();
    w.start_service_with("TimeoutStopSec=20s\n");
    w
}

/// Each release switched once, in order, and nothing was rolled back.
fn switched_once(w: &World, systems: &[&str]) {
    let switches: Vec<String> = w.switch_log().iter().map(|l| name(&l[7..]).to_owned()).collect();
    let names: Vec<String> = systems.iter().map(|s| name(&w.systems[s]).to_owned()).collect();
    assert_eq!(switches, names, "{:?}", w.switch_log());
}

/// Realising: Nix waits for a NAR the cache holds back. A restart stops
/// Nix with the agent (it used to end the release in a permanent `error`,
/// "nix-store: interrupted by the user"); the agent started again realises
/// again and deploys.
#[test]
fn a_restart_while_realising_resumes_the_realise() {
    let w = service();
    w.faulty_cache.as_ref().unwrap().set(NarFault::Hold);
    let rb = w.release("b");
    wait_until(&w, 120, "Nix to ask the cache for a NAR", || {
        w.faulty_cache.as_ref().unwrap().nar_requests() > 0
    });
    assert_eq!(phase(&w), "realising");
    systemctl(&w, &["restart", "ferry-agent.service"]);
    w.faulty_cache.as_ref().unwrap().set(NarFault::None);
    wait_until(&w, 120, "b to be deployed after the restart", || {
        w.status_of(&rb).iter().any(|(s, _)| s != "pending")
    });
    deployed_once(&w, &rb);
    assert_eq!(w.running(), w.systems["b"]);
    switched_once(&w, &["b"]);
}

/// Switching: the switch runs in its own unit and outlives the stop; the
/// agent does not wait for it (it used to, until systemd killed it), and
/// after the start follows it to its end.
#[test]
fn a_stop_while_switching_ends_at_once_and_follows_the_switch() {
    let w = service();
    let switch_held = hold(&w, "hold-switch");
    let rc = w.release("c");
    wait_until(&w, 120, "the switch to c to start", || {
        w.bed.host_path("/run/ferry-test/switching").exists()
    });
    stop(&w);
    assert_eq!(phase(&w), "switching");
    std::fs::remove_file(switch_held).unwrap();
    systemctl(&w, &["start", "ferry-agent.service"]);
    wait_until(&w, 120, "c to be deployed after the start", || {
        w.status_of(&rc).iter().any(|(s, _)| s != "pending")
    });
    deployed_once(&w, &rc);
    assert_eq!(w.running(), w.systems["c"]);
    switched_once(&w, &["c"]);
}

/// Checking: the health command is stopped with the agent; its death is
/// not the release's fault (it used to be rolled back: "exited with a
/// signal"), and the check runs again after the start.
#[test]
fn a_stop_while_checking_health_checks_again_and_does_not_roll_back() {
    let w = service();
    let check_held = hold(&w, "hold-check");
    let rb = w.release("b");
    wait_until(&w, 120, "the check of b to start", || {
        w.bed.host_path("/run/ferry-test/checking").exists()
    });
    stop(&w);
    assert_eq!(phase(&w), "checking");
    std::fs::remove_file(check_held).unwrap();
    systemctl(&w, &["start", "ferry-agent.service"]);
    wait_until(&w, 120, "b to be deployed after the start", || {
        w.status_of(&rb).iter().any(|(s, _)| s != "pending")
    });
    deployed_once(&w, &rb);
    assert_eq!(w.running(), w.systems["b"]);
    switched_once(&w, &["b"]);
}

/// Rolling back: the rollback runs in its own unit too; a stop ends the
/// agent at once, and after the start it follows the rollback to its end:
/// one failure status, the previous system running, one rollback.
#[test]
fn a_stop_while_rolling_back_ends_at_once_and_follows_the_rollback() {
    let w = service();
    let rc = w.release("c");
    wait_until(&w, 120, "c to be deployed", || {
        w.status_of(&rc).iter().any(|(s, _)| s != "pending")
    });
    deployed_once(&w, &rc);
    // The release breaks a unit; putting c back is held.
    let switch_held = hold(&w, "hold-switch");
    std::fs::remove_file(w.bed.host_path("/run/ferry-test/switching")).unwrap();
    let rbad = w.release("breaks");
    wait_until(&w, 120, "the rollback to c to start", || {
        w.bed.host_path("/run/ferry-test/switching").exists()
    });
    stop(&w);
    assert_eq!(phase(&w), "rolling-back");
    std::fs::remove_file(switch_held).unwrap();
    systemctl(&w, &["start", "ferry-agent.service"]);
    wait_until(&w, 120, "the rollback to end after the start", || {
        w.status_of(&rbad).iter().any(|(s, _)| s != "pending")
    });
    let said = w.status_of(&rbad);
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        said[1].0 == "failure"
            && said[1].1.contains("failed units: broken-")
            && said[1].1.contains("rolled back to"),
        "{said:?}"
    );
    assert_eq!(w.running(), w.systems["c"]);
    switched_once(&w, &["c", "breaks", "c"]);
}

/// `ferry-agent once` stopped (SIGTERM) while Nix waits for a NAR: it ends
/// at once with 143, the deploy still `realising`, and the next run
/// resumes it and deploys.
#[test]
fn once_stopped_while_realising_exits_143_and_the_next_run_deploys() {
    let w = world();
    w.faulty_cache.as_ref().unwrap().set(NarFault::Hold);
    let rb = w.release("b");
    // The agent notes its pid in the testbed (the shell execs it), so the
    // stop reaches it, and only it, from inside the testbed's own view of
    // its processes.
    let first = std::process::Command::new("nsenter")
        .args(["-t", &w.bed.pid.to_string(), "-a", "-r", "-w"])
        .args([
            "sh",
            "-c",
            &format!("echo $$ > /run/ferry-once.pid; exec {AGENT} --config /etc/ferry/agent.toml once"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(&w, 120, "Nix to ask the cache for a NAR", || {
        w.faulty_cache.as_ref().unwrap().nar_requests() > 0
    });
    let kill = w
        .bed
        .exec(&["sh", "-c", "kill -TERM \"$(cat /run/ferry-once.pid)\""]);
    assert!(kill.status.success(), "{}", String::from_utf8_lossy(&kill.stderr));
    let out = first.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{said}");
    assert!(
        said.contains("stopped; a deploy in flight resumes at the next run"),
        "{said}"
    );
    assert_eq!(phase(&w), "realising");
    assert_eq!(
        w.status_of(&rb).len(),
        1,
        "only deploying: {:?}",
        w.status_of(&rb)
    );
    w.faulty_cache.as_ref().unwrap().set(NarFault::None);
    let (ok, out) = w.once();
    assert!(ok && out.contains("deployed"), "{out}");
    deployed_once(&w, &rb);
    switched_once(&w, &["b"]);
}

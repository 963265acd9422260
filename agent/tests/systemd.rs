//! Transient units through systemd's D-Bus API, against a real systemd as PID 1.

use std::time::Duration;

use ferry_agent::io::systemd::bus::{Command, Systemd, SystemdError, TransientService, UnitState};
use ferry_test_support::nix;
use ferry_test_support::systemd::Testbed;

fn service(name: &str, script: &str, max: Duration) -> TransientService {
    TransientService {
        name: name.into(),
        description: format!("test {name}"),
        exec_start: Command::new(script, &["switch"]),
        exec_stop_post: Some(Command::new(
            "/bin/sh",
            &[
                "-c",
                &format!("echo \"$SERVICE_RESULT $EXIT_CODE $EXIT_STATUS\" > /run/{name}.result"),
            ],
        )),
        environment: vec!["FERRY_TEST=1".into()],
        runtime_max: max,
    }
}

#[test]
fn transient_units_run_report_and_lock() {
    let dir = tempfile::tempdir().unwrap();
    let s = ferry_test_support::unique("sd");
    let ok = nix::build_script(
        dir.path(),
        "ok",
        &s,
        "test \"$1\" = switch && test \"$FERRY_TEST\" = 1 && exit 0; exit 9",
    );
    let fails = nix::build_script(dir.path(), "fails", &s, "exit 4");
    let hangs = nix::build_script(dir.path(), "hangs", &s, "exec sleep 600");
    let bed = Testbed::boot();
    let rt = crate::common::runtime();
    rt.block_on(async {
        let sd = Systemd::connect_to(&bed.bus_address()).await.unwrap();

        // Exit 0, with the argv and environment we gave it.
        sd.start(&service("t-ok", &ok, Duration::from_secs(60)))
            .await
            .unwrap();
        // A successful unit may be collected before we look: then its
        // ExecStopPost record is the witness.
        if let Some(outcome) = sd.wait("t-ok", Duration::from_secs(30)).await.unwrap() {
            assert_eq!(
                (outcome.result.as_str(), outcome.code, outcome.status),
                ("success", 1, 0)
            );
        }
        let recorded = std::fs::read_to_string(bed.host_path("/run/t-ok.result")).unwrap();
        assert_eq!(recorded.trim(), "success exited 0");
        sd.release("t-ok").await.unwrap();

        // Exit 4: the status and systemd's result.
        sd.start(&service("t-fails", &fails, Duration::from_secs(60)))
            .await
            .unwrap();
        let outcome = sd
            .wait("t-fails", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((outcome.result.as_str(), outcome.status), ("exit-code", 4));
        assert!(sd
            .failed_units()
            .await
            .unwrap()
            .contains(&"t-fails.service".to_string()));
        // ExecStopPost saw the same result.
        let recorded = std::fs::read_to_string(bed.host_path("/run/t-fails.result")).unwrap();
        assert_eq!(recorded.trim(), "exit-code exited 4");
        sd.release("t-fails").await.unwrap();
        assert!(!sd
            .failed_units()
            .await
            .unwrap()
            .contains(&"t-fails.service".to_string()));

        // A hanging switch: the name is a lock while it runs, RuntimeMaxSec ends it.
        sd.start(&service("t-hangs", &hangs, Duration::from_secs(2)))
            .await
            .unwrap();
        assert_eq!(sd.state("t-hangs").await.unwrap(), UnitState::Running);
        let again = sd
            .start(&service("t-hangs", &hangs, Duration::from_secs(2)))
            .await
            .unwrap_err();
        assert!(matches!(again, SystemdError::Busy { .. }), "{again}");
        let short = sd.wait("t-hangs", Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(short, SystemdError::Timeout { .. }), "{short}");
        let outcome = sd
            .wait("t-hangs", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome.result, "timeout");
        sd.release("t-hangs").await.unwrap();

        // Stopping a running unit.
        sd.start(&service("t-stop", &hangs, Duration::from_secs(600)))
            .await
            .unwrap();
        sd.stop("t-stop").await.unwrap();
        let outcome = sd.wait("t-stop", Duration::from_secs(30)).await.unwrap();
        assert!(
            outcome.is_none() || outcome.unwrap().code == 2,
            "killed by a signal"
        );
        assert_eq!(sd.state("never-started").await.unwrap(), UnitState::Absent);
    });
}

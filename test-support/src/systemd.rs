//! A throwaway systemd as PID 1 of a new PID namespace, booted on a
//! copy-on-write overlay of `/` (docs/testing.md) so nothing it writes
//! reaches this machine. Its system bus is reachable from the test process at
//! `/proc/<pid>/root/run/dbus/system_bus_socket`; `/nix` and this checkout are
//! visible inside through the overlay. Killed (SIGKILL) on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The same boot script the demo uses.
const BOOT: &str = include_str!("../../scripts/lib/boot-systemd.sh");

#[derive(Debug)]
pub struct Testbed {
    /// Held for the testbed's life: testbeds share this machine's cgroup
    /// tree (`/sys` is bind-mounted), so two systemds at once would manage
    /// the same `system.slice/*` cgroups and remove each other's.
    _lock: std::fs::File,
    unshare: Child,
    /// PID of the container's systemd, as this machine sees it.
    pub pid: u32,
    scratch: PathBuf,
}

impl Testbed {
    /// Boots systemd and waits until it reports `running` (bounded).
    pub fn boot() -> Self {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/dev/shm/ferry-testbed.lock")
            .unwrap();
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let scratch = tempfile::Builder::new()
            .prefix("ferry-sd.")
            .tempdir_in("/dev/shm")
            .unwrap()
            .keep();
        let (unshare, pid) = start(&scratch);
        let bed = Self {
            _lock: lock,
            unshare,
            pid,
            scratch,
        };
        bed.wait_running();
        // Give the testbed a private copy of the Nix database, taken while no
        // test writes it. A copy that replaces the directory (rather than
        // copying files up into it) makes the directory opaque in the
        // overlay: files this machine's Nix creates later (a new WAL) must not
        // show through into the testbed's database. A reader (which takes no
        // lock) opening and closing the database can remove its `-wal` and
        // `-shm` files between `cp` listing and copying them: that copy is
        // taken again.
        let _nix = crate::nix::lock();
        let out = bed.exec(&[
            "sh",
            "-c",
            "set -e; cd /nix/var/nix; tries=0; \
             until cp -a db db.private; do \
               tries=$((tries + 1)); [ $tries -lt 5 ] || exit 1; rm -rf db.private; sleep 0.2; \
             done; \
             rm -rf db; mv db.private db; touch gc.lock",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        bed
    }

    /// Whether the testbed's systemd has gone down for a reboot: PID 1 of a
    /// PID namespace that reboots is killed with SIGHUP (SIGINT for a halt
    /// or power-off), which `unshare` passes on.
    pub fn went_down_for_reboot(&mut self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        match self.unshare.try_wait().unwrap() {
            None => false,
            // SIGHUP is 1 on every Linux architecture.
            Some(status) if status.signal() == Some(1) => true,
            Some(status) => panic!("the testbed's systemd ended ({status}), not for a reboot"),
        }
    }

    /// Waits (bounded by `within`) for the testbed's systemd to go down for a
    /// reboot, then boots the same overlay again — the machine's next boot,
    /// with everything it wrote to disk and a fresh `/run` — and, as a boot
    /// loader and NixOS's stage 2 would, points `/run/booted-system` and
    /// `/run/current-system` at `system` (the profile's newest generation
    /// when `None`).
    pub fn next_boot(&mut self, within: Duration, system: Option<&str>) {
        let deadline = Instant::now() + within;
        while !self.went_down_for_reboot() {
            assert!(
                Instant::now() < deadline,
                "the testbed did not reboot within {}s",
                within.as_secs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let (unshare, pid) = start(&self.scratch);
        self.unshare = unshare;
        self.pid = pid;
        self.wait_running();
        let system = match system {
            Some(s) => s.to_owned(),
            None => {
                let out = self.exec(&["readlink", "-f", "/nix/var/nix/profiles/system"]);
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
        };
        for link in ["/run/booted-system", "/run/current-system"] {
            let out = self.exec(&["ln", "-sfn", &system, link]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }

    /// Waits (bounded) until systemd reports `running` (or `degraded`).
    fn wait_running(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.exec(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                break;
            }
            if Instant::now() > deadline {
                boot_failed(
                    &self.scratch,
                    &format!("systemd in the testbed is `{state}`, not running"),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The D-Bus address of the testbed's system bus, for this process.
    pub fn bus_address(&self) -> String {
        format!("unix:path=/proc/{}/root/run/dbus/system_bus_socket", self.pid)
    }

    /// A path inside the testbed, as seen from this machine.
    pub fn host_path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inside}", self.pid))
    }

    /// Copies an executable into the testbed at `inside` (the checkout may
    /// not be visible there: its /tmp is a fresh tmpfs).
    pub fn install(&self, executable: impl AsRef<std::path::Path>, inside: &str) {
        let target = self.host_path(inside);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(executable, &target).unwrap();
    }

    /// Runs a command inside the testbed.
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-a", "-r", "-w"])
            .args(argv)
            .output()
            .expect("nsenter (util-linux) is installed")
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // SIGTERM only makes systemd re-execute; SIGKILL of the namespace's
        // PID 1 ends every process in it. Sent with a system call, so the
        // teardown needs no `kill` command on the machine; a testbed that
        // outlives it is reported, never left behind silently.
        if let Err(e) = kill9(self.pid) {
            eprintln!(
                "testbed teardown: cannot kill its systemd (PID {}): {e}; kill it by hand",
                self.pid
            );
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{}", self.pid)).exists() {
            if Instant::now() > deadline {
                eprintln!(
                    "testbed teardown: its systemd (PID {}) is still running 10 s after SIGKILL",
                    self.pid
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The overlay's upper directory lives here (kept across reboots).
        let _ = std::fs::remove_dir_all(&self.scratch);
        let _ = std::fs::remove_file(self.scratch.with_extension("log"));
    }
}

/// Sends SIGKILL to a process of this machine (by the PID this machine sees).
pub fn kill9(pid: u32) -> std::io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| std::io::Error::other("PID 0 is not a process"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)?;
    Ok(())
}

/// Boots systemd on the overlay whose scratch space (kept across reboots) is
/// `scratch`; returns `unshare` and systemd's PID as this machine sees it.
fn start(scratch: &std::path::Path) -> (Child, u32) {
    // What the boot script and systemd print, kept for a failed boot.
    let log = std::fs::File::create(scratch.with_extension("log")).unwrap();
    let unshare = Command::new("unshare")
        .args([
            "--pid", "--fork", "--mount", "--uts", "--ipc", "bash", "-c", BOOT, "boot",
        ])
        .arg(scratch)
        .arg("keep")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("unshare (util-linux) is installed");
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid = loop {
        let children =
            std::fs::read_to_string(format!("/proc/{}/task/{}/children", unshare.id(), unshare.id()))
                .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "systemd" {
                break pid;
            }
        }
        if Instant::now() > deadline {
            boot_failed(
                scratch,
                "systemd did not start in the namespace (is systemd installed?)",
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (unshare, pid)
}

fn boot_failed(scratch: &std::path::Path, what: &str) -> ! {
    panic!(
        "{what}; the boot script and systemd said:\n{}",
        std::fs::read_to_string(scratch.with_extension("log")).unwrap_or_default()
    )
}

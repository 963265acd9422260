//! systemd, over D-Bus with zbus: the only module that speaks D-Bus. It starts
//! transient services (`StartTransientUnit`), waits for them with a timeout,
//! finds one that is already running after a restart, stops one, and lists
//! failed units. Proxies list only the methods and signals Ferry uses.

use std::time::Duration;

use futures_util::StreamExt;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::Connection;

/// One row of `ListUnits*`: name, description, load state, active state, sub
/// state, followed unit, object path, job id, job type, job path.
type UnitListing = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn list_units_by_patterns(&self, states: &[&str], patterns: &[&str]) -> zbus::Result<Vec<UnitListing>>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn subscribe(&self) -> zbus::Result<()>;
    fn list_units_filtered(&self, states: &[&str]) -> zbus::Result<Vec<UnitListing>>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property)]
    fn userspace_timestamp(&self) -> zbus::Result<u64>;
    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn exec_main_code(&self) -> zbus::Result<i32>;
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::Result<i32>;
}

/// Why talking to systemd failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot connect to the system bus: {0}")]
    Connect(zbus::Error),
    #[error("{unit} is already running: another switch is in progress")]
    Busy { unit: String },
    #[error("systemd already has a unit {unit} ({message}): another switch may be in progress")]
    Exists { unit: String, message: String },
    #[error("systemd refused to start {unit}: job {result}")]
    JobFailed { unit: String, result: String },
    #[error("{unit} did not finish within {}s", .timeout.as_secs())]
    Timeout { unit: String, timeout: Duration },
    #[error("D-Bus call to systemd failed: {0}")]
    Bus(#[from] zbus::Error),
}

/// A command for a transient service: the program and its full argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub path: String,
    /// argv including argv[0].
    pub argv: Vec<String>,
}

impl Command {
    pub fn new(path: impl Into<String>, args: &[&str]) -> Self {
        let path = path.into();
        let mut argv = vec![path.clone()];
        argv.extend(args.iter().map(|a| a.to_string()));
        Self { path, argv }
    }
}

/// What to run as a transient `Type=exec` service.
#[derive(Debug, Clone)]
pub struct TransientService {
    /// Unit name without `.service`.
    pub name: String,
    pub description: String,
    pub exec_start: Command,
    /// Runs when the service stops, however it stops, with systemd's
    /// `$SERVICE_RESULT`, `$EXIT_CODE` and `$EXIT_STATUS` in its environment.
    pub exec_stop_post: Option<Command>,
    /// `NAME=value` pairs.
    pub environment: Vec<String>,
    /// systemd stops the service after this long (`RuntimeMaxSec`).
    pub runtime_max: Duration,
}

/// How a service ended, from its `Service` properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceOutcome {
    /// systemd's `Result`: success, exit-code, signal, timeout, core-dump, …
    pub result: String,
    /// `ExecMainCode`: 1 = exited, 2 = killed, 3 = dumped (CLD_* codes).
    pub code: i32,
    /// Exit status, or the signal number.
    pub status: i32,
}

/// Where a service stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitState {
    /// Not loaded (never started, or ended well and collected), or inactive.
    Absent,
    /// Starting, running or stopping (ExecStopPost included).
    Running,
    /// Failed, and kept loaded by systemd until reset.
    Finished(ServiceOutcome),
}

/// A connection to systemd.
#[derive(Debug, Clone)]
pub struct Systemd {
    conn: Connection,
}

impl Systemd {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else the standard socket).
    pub async fn connect() -> Result<Self, SystemdError> {
        let conn = Connection::system().await.map_err(SystemdError::Connect)?;
        Ok(Self { conn })
    }

    /// Connects to a bus at an explicit address, e.g. `unix:path=/run/dbus/system_bus_socket`.
    pub async fn connect_to(address: &str) -> Result<Self, SystemdError> {
        let conn = zbus::connection::Builder::address(address)?
            .build()
            .await
            .map_err(SystemdError::Connect)?;
        Ok(Self { conn })
    }

    async fn manager(&self) -> Result<ManagerProxy<'_>, SystemdError> {
        Ok(ManagerProxy::new(&self.conn).await?)
    }

    /// Starts `service` and waits until its start job completes. Refuses
    /// (`Busy`) when a unit of that name is already loaded and running: the
    /// fixed name doubles as a lock.
    pub async fn start(&self, service: &TransientService) -> Result<(), SystemdError> {
        let unit = format!("{}.service", service.name);
        let manager = self.manager().await?;
        match manager.subscribe().await {
            Ok(()) => {}
            Err(zbus::Error::MethodError(e, _, _)) if e.as_str().ends_with("AlreadySubscribed") => {}
            Err(e) => return Err(e.into()),
        }
        let mut removed = manager.receive_job_removed().await?;

        let exec = |c: &Command| Value::from(vec![(c.path.clone(), c.argv.clone(), false)]);
        let mut props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(service.description.as_str())),
            ("Type", Value::from("exec")),
            ("ExecStart", exec(&service.exec_start)),
            ("Environment", Value::from(service.environment.clone())),
            (
                "RuntimeMaxUSec",
                Value::from(u64::try_from(service.runtime_max.as_micros()).unwrap_or(u64::MAX)),
            ),
        ];
        if let Some(post) = &service.exec_stop_post {
            props.push(("ExecStopPost", exec(post)));
        }
        // A finished unit of the same name blocks a new transient unit until
        // systemd collects it: clear it and retry for a while. A running one
        // is another switch: refuse.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let job = loop {
            match self.state(&service.name).await? {
                UnitState::Running => return Err(SystemdError::Busy { unit }),
                UnitState::Finished(_) => self.release(&service.name).await?,
                UnitState::Absent => {}
            }
            match manager.start_transient_unit(&unit, "fail", &props, &[]).await {
                Ok(job) => break job,
                Err(zbus::Error::MethodError(name, message, _)) if name.as_str().ends_with("UnitExists") => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(SystemdError::Exists {
                            unit,
                            message: message.unwrap_or_default(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        while let Some(signal) = removed.next().await {
            let args = signal.args()?;
            if args.job.as_str() == job.as_str() {
                return match args.result.as_str() {
                    // `failed`: it started and failed at once; its outcome is
                    // the unit's, for `wait` to read.
                    "done" | "failed" => Ok(()),
                    other => Err(SystemdError::JobFailed {
                        unit,
                        result: other.to_owned(),
                    }),
                };
            }
        }
        Err(SystemdError::JobFailed {
            unit,
            result: "lost (signal stream ended)".into(),
        })
    }

    /// The state of service `name` (without `.service`).
    ///
    /// Only loaded units are listed (`ListUnitsByPatterns` loads nothing):
    /// touching the object path of a unit being collected would make systemd
    /// load it again from its transient file and keep it forever. Properties
    /// are read only from failed units, which systemd keeps until reset. A
    /// unit that ended well is collected at once; its outcome is what
    /// `ExecStopPost` recorded.
    pub async fn state(&self, name: &str) -> Result<UnitState, SystemdError> {
        let unit = format!("{name}.service");
        let units = self
            .manager()
            .await?
            .list_units_by_patterns(&[], &[unit.as_str()])
            .await?;
        let Some(u) = units.into_iter().find(|u| u.0 == unit) else {
            return Ok(UnitState::Absent);
        };
        let (load_state, active_state, path) = (u.2, u.3, u.6);
        if load_state != "loaded" {
            return Ok(UnitState::Absent);
        }
        match active_state.as_str() {
            "inactive" => Ok(UnitState::Absent),
            "failed" => {
                let svc = ServiceProxy::builder(&self.conn)
                    .path(path)?
                    .cache_properties(CacheProperties::No)
                    .build()
                    .await?;
                Ok(UnitState::Finished(ServiceOutcome {
                    result: svc.result().await?,
                    code: svc.exec_main_code().await?,
                    status: svc.exec_main_status().await?,
                }))
            }
            _ => Ok(UnitState::Running),
        }
    }

    /// When systemd (PID 1) started, in microseconds since the epoch: it
    /// stays through `daemon-reexec` and changes with every boot, a
    /// container's included (whose kernel boot id does not).
    pub async fn userspace_started(&self) -> Result<u64, SystemdError> {
        Ok(self.manager().await?.userspace_timestamp().await?)
    }

    /// Reboots: starts `reboot.target` as `systemctl reboot` does without
    /// logind, in mode `replace-irreversibly`, so no later job cancels it.
    /// A second request while the first is under way joins it.
    pub async fn reboot(&self) -> Result<(), SystemdError> {
        self.manager()
            .await?
            .start_unit("reboot.target", "replace-irreversibly")
            .await?;
        Ok(())
    }

    /// Names of units matching `pattern` that are starting, running or stopping.
    pub async fn active_units(&self, pattern: &str) -> Result<Vec<String>, SystemdError> {
        let states = ["activating", "active", "deactivating", "reloading"];
        let units = self
            .manager()
            .await?
            .list_units_by_patterns(&states, &[pattern])
            .await?;
        Ok(units.into_iter().map(|u| u.0).collect())
    }

    /// Waits (polling, bounded by `timeout`) until service `name` has finished.
    /// `None` when it finished and was collected before its outcome was read
    /// (a successful unit is collected at once): callers that need the
    /// outcome then have it recorded by `ExecStopPost`.
    pub async fn wait(&self, name: &str, timeout: Duration) -> Result<Option<ServiceOutcome>, SystemdError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.state(name).await? {
                UnitState::Finished(outcome) => return Ok(Some(outcome)),
                UnitState::Absent => return Ok(None),
                UnitState::Running => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SystemdError::Timeout {
                    unit: format!("{name}.service"),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Clears a failed unit's state so systemd collects it.
    pub async fn release(&self, name: &str) -> Result<(), SystemdError> {
        let _ = self
            .manager()
            .await?
            .reset_failed_unit(&format!("{name}.service"))
            .await;
        Ok(())
    }

    /// Stops service `name` (for a switch that hangs).
    pub async fn stop(&self, name: &str) -> Result<(), SystemdError> {
        let unit = format!("{name}.service");
        match self.manager().await?.stop_unit(&unit, "replace").await {
            Ok(_) => Ok(()),
            Err(zbus::Error::MethodError(e, _, _)) if e.as_str().ends_with("NoSuchUnit") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Names of units currently in the `failed` state.
    pub async fn failed_units(&self) -> Result<Vec<String>, SystemdError> {
        let units = self.manager().await?.list_units_filtered(&["failed"]).await?;
        Ok(units.into_iter().map(|u| u.0).collect())
    }
}

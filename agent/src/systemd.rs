//! systemd, over D-Bus with zbus: the only module that speaks D-Bus. It starts
//! transient services (`StartTransientUnit`), waits for them with a timeout,
//! finds one that is already running after a restart, stops one, and lists
//! failed units. Proxies list only the methods and signals Ferry uses.

use std::time::Duration;

use futures_util::StreamExt;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::Connection;

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
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn subscribe(&self) -> zbus::Result<()>;
    #[allow(clippy::type_complexity)]
    fn list_units_filtered(
        &self,
        states: &[&str],
    ) -> zbus::Result<
        Vec<(
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
        )>,
    >;
    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    fn unref(&self) -> zbus::Result<()>;
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
    /// Not loaded: never started, or finished and garbage-collected.
    Absent,
    /// Starting, running or stopping.
    Running,
    /// Finished and still loaded.
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
        if self.state(&service.name).await? == UnitState::Running {
            return Err(SystemdError::Busy { unit });
        }
        // A finished unit left loaded (failed) would block the name.
        let _ = manager.reset_failed_unit(&unit).await;
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
            ("AddRef", Value::from(true)),
        ];
        if let Some(post) = &service.exec_stop_post {
            props.push(("ExecStopPost", exec(post)));
        }
        let job = match manager.start_transient_unit(&unit, "fail", &props, &[]).await {
            Ok(job) => job,
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str().ends_with("UnitExists") => {
                return Err(SystemdError::Busy { unit })
            }
            Err(e) => return Err(e.into()),
        };
        while let Some(signal) = removed.next().await {
            let args = signal.args()?;
            if args.job.as_str() == job.as_str() {
                return match args.result.as_str() {
                    "done" => Ok(()),
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
    pub async fn state(&self, name: &str) -> Result<UnitState, SystemdError> {
        let unit = format!("{name}.service");
        let path = match self.manager().await?.get_unit(&unit).await {
            Ok(p) => p,
            Err(zbus::Error::MethodError(e, _, _)) if e.as_str().ends_with("NoSuchUnit") => {
                return Ok(UnitState::Absent)
            }
            Err(e) => return Err(e.into()),
        };
        let unit_proxy = UnitProxy::builder(&self.conn)
            .path(path.clone())?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let active = match unit_proxy.active_state().await {
            Ok(a) => a,
            // Collected between the two calls.
            Err(zbus::Error::MethodError(..)) | Err(zbus::Error::FDO(_)) => return Ok(UnitState::Absent),
            Err(e) => return Err(e.into()),
        };
        match active.as_str() {
            "inactive" | "failed" => {
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

    /// Waits (polling, bounded by `timeout`) until service `name` has finished.
    /// `None` when it finished and was collected before its outcome was read.
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

    /// Drops our reference and any failed state so the unit is collected.
    pub async fn release(&self, name: &str) -> Result<(), SystemdError> {
        let unit = format!("{name}.service");
        let manager = self.manager().await?;
        if let Ok(path) = manager.get_unit(&unit).await {
            if let Ok(proxy) = UnitProxy::builder(&self.conn).path(path)?.build().await {
                let _ = proxy.unref().await;
            }
        }
        let _ = manager.reset_failed_unit(&unit).await;
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

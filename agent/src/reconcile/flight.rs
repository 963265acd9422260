//! A deploy in flight, phase by phase: each [`Phase`] has one handler here
//! that takes the phase's step and names the next phase, a wait, or the end.
//! Every phase is recorded before its step is taken, so an agent killed at
//! any instant resumes in the phase it was in (`advance`).

use super::*;

impl InFlight {
    /// The unit the phase runs, the system it activates and how: the
    /// release's for switching, the previous system's for rolling back.
    pub(super) fn activation(&self) -> Option<(Activation, &StorePath, Action)> {
        match &self.phase {
            Phase::Switching => Some((Activation::Switch, &self.target.toplevel, self.action)),
            Phase::RollingBack { to, .. } => {
                Some((Activation::Rollback, to, ending::rollback_action(self.action)))
            }
            Phase::Realising
            | Phase::Checking { .. }
            | Phase::AwaitingReboot { .. }
            | Phase::Rebooting { .. } => None,
        }
    }
}

impl Agent {
    /// Drives a deploy in flight from its recorded phase to its end: each
    /// phase is recorded (and announced) before its handler takes its step.
    /// `fresh`: the phase was recorded just now, not resumed after a restart.
    pub(super) async fn advance(
        &mut self,
        state: &mut State,
        mut flight: InFlight,
        mut fresh: bool,
    ) -> Result<Pass> {
        loop {
            let next = match flight.phase.clone() {
                Phase::Realising => self.realising(&flight).await?,
                Phase::Switching => self.switching(&flight, fresh).await?,
                Phase::Checking { switch } => self.checking(&flight, switch).await?,
                Phase::RollingBack { to, problem } => {
                    self.rolling_back(&flight, fresh, &to, &problem).await?
                }
                Phase::AwaitingReboot { at } => self.awaiting_reboot(&flight, at).await?,
                Phase::Rebooting { boot } => self.rebooting(&flight, &boot).await?,
            };
            match next {
                Next::Phase(phase) => {
                    debug_assert!(
                        flight.phase.successors().contains(&phase.name()),
                        "transition not allowed: {} to {}",
                        flight.phase.name(),
                        phase.name()
                    );
                    flight.phase = phase;
                    state.in_flight = Some(flight.clone());
                    let resumed = self.fault_over(state, &flight);
                    let announced = self.announce_phase(state, &flight);
                    self.state.save(state)?;
                    // Delivered before the step: "rebooting" reaches the
                    // forge before the host goes down, if it can.
                    if (announced || resumed) && self.flush(state) {
                        self.ports.statuses.deliver().await;
                    }
                    fresh = true;
                }
                Next::End(ending) => return self.finish(state, &flight, ending),
                Next::Wait(result) => return Ok(result),
            }
        }
    }

    /// Realises the closure and sets the profile; then the switch.
    pub(super) async fn realising(&mut self, flight: &InFlight) -> Result<Next> {
        let toplevel = &flight.target.toplevel;
        info!(
            ferry_phase = flight.phase.name(),
            "realising the closure from the binary cache"
        );
        // The status says why first (cut to 140 characters); the journal
        // gets the whole error. A fault a retry cures (Nix stopped, the
        // store full, the cache failing mid-transfer) keeps the phase: the
        // reconcile fails and the step is taken again.
        if let Err(e) = self.ports.store.realise(toplevel).await {
            if faults::store_fault(&e) == Fault::Transient {
                warn!(
                    ferry_phase = flight.phase.name(),
                    "cannot realise the closure yet: {e}"
                );
                return self.retry_unless_superseded(flight, e).await;
            }
            error!(
                ferry_phase = flight.phase.name(),
                "cannot realise the closure: {e}"
            );
            return Ok(Next::End(Ending {
                kind: OutcomeKind::Error,
                description: wording::cannot_realise(&e.reason()),
            }));
        }
        if flight.action.sets_profile() {
            if let Err(e) = self.ports.store.set_profile(toplevel).await {
                if faults::store_fault(&e) == Fault::Transient {
                    warn!(
                        ferry_phase = flight.phase.name(),
                        "cannot set the system profile yet: {e}"
                    );
                    return Err(e.into());
                }
                error!(
                    ferry_phase = flight.phase.name(),
                    "cannot set the system profile: {e}"
                );
                return Ok(Next::End(Ending {
                    kind: OutcomeKind::Error,
                    description: wording::cannot_set_profile(&e.reason()),
                }));
            }
        }
        Ok(Next::Phase(Phase::Switching))
    }

    /// A realise that a retry may cure (`e`) is retried, unless a newer
    /// release has arrived: nothing has changed on the host yet, so the
    /// deploy ends (`error`, saying why) and the newer one is taken at the
    /// next reconcile; a release whose closure cannot be realised never
    /// holds back the one that replaces it. Nix stopped by a stop of the
    /// agent is retried without asking the repository.
    async fn retry_unless_superseded(&mut self, flight: &InFlight, e: StoreError) -> Result<Next> {
        if !matches!(e, StoreError::Interrupted { .. }) {
            if let Ok(tip) = self.ports.source.remote_tip().await {
                if tip != flight.tip && self.supersedes(&tip, flight).await {
                    warn!(
                        ferry_phase = flight.phase.name(),
                        "a newer tip ({tip}) arrived while the closure could not be realised: it is deployed next"
                    );
                    return Ok(Next::End(Ending {
                        kind: OutcomeKind::Error,
                        description: wording::cannot_realise_superseded(&e.reason()),
                    }));
                }
            }
        }
        Err(e.into())
    }

    /// Starts the switch unit (when the phase is fresh) and sees it to its
    /// end; then the check.
    pub(super) async fn switching(&mut self, flight: &InFlight, fresh: bool) -> Result<Next> {
        let switch = match self.see_through(flight, fresh).await? {
            Seen::Ended(switch) => switch,
            Seen::Held(pass) => return Ok(Next::Wait(pass)),
        };
        info!(
            ferry_phase = flight.phase.name(), ferry_switch_result = %switch.encode(),
            "{}", switch.describe()
        );
        Ok(Next::Phase(Phase::Checking { switch }))
    }

    /// Checks health (when the switch activated a running system) and asks
    /// `policy::ending` what it all means: the end, or a rollback.
    pub(super) async fn checking(&mut self, flight: &InFlight, switch: SwitchResult) -> Result<Next> {
        let health = if ending::checks_health(flight.action, switch) {
            info!(ferry_phase = flight.phase.name(), "checking health");
            let health = &self.config.health;
            self.ports
                .units
                .check_health(health.settle, &health.commands)
                .await?
                .new_since(&self.config.switch.unit, &flight.failed_before)
        } else {
            Health::default()
        };
        // A check stopped from outside (the agent's stop signals its whole
        // cgroup) says nothing of the release: the phase is kept and the
        // check runs again.
        if let Some((command, signal)) = health.killed().find(|(_, s)| faults::stop_signal(*s)) {
            return Err(ReconcileError::Interrupted {
                what: format!("the health check `{command}`"),
                how: format!("killed by {}", crate::io::nix::signal_name(signal)),
            });
        }
        let kernel_changed =
            flight.action == Action::Switch && self.ports.store.kernel_changed(&flight.target.toplevel);
        let checked = Checked {
            host: &self.config.host,
            serial: flight.target.serial,
            action: flight.action,
            switch,
            health: &health,
            kernel_changed,
            rollback_enabled: self.config.switch.rollback,
            previous: flight.previous.as_ref(),
        };
        Ok(match ending::after_check(&checked) {
            AfterCheck::RollBack { to, problem } => Next::Phase(Phase::RollingBack { to, problem }),
            AfterCheck::End(end) => match &self.config.reboot {
                RebootPolicy::InWindow(windows) if ending::needs_reboot(end.kind) => {
                    let (now, zone) = (self.ports.clock.now(), self.ports.clock.zone());
                    let at = windows
                        .reboot_moment(&self.config.host, now, &zone)
                        .ok_or_else(|| ReconcileError::NoWindowOpening(windows.clone()))?;
                    Next::Phase(Phase::AwaitingReboot { at })
                }
                _ => Next::End(end),
            },
        })
    }

    /// Waits for the reboot's moment, then records the boot it is requested
    /// in. Never while a switch or rollback unit runs, and only while the
    /// window is open (a moment missed, the host being down, moves to the
    /// next window). The deploy ends as needing a reboot, without one, when
    /// a newer verified release arrives first (it is deployed next, and
    /// reboots in its turn) or the policy became `never`.
    pub(super) async fn awaiting_reboot(&mut self, flight: &InFlight, at: DateTime<Utc>) -> Result<Next> {
        let serial = flight.target.serial;
        let (host, action) = (self.config.host.clone(), flight.action);
        let pending = move || ending::reboot_required(&host, serial, action);
        let RebootPolicy::InWindow(windows) = self.config.reboot.clone() else {
            info!(
                ferry_phase = flight.phase.name(),
                "reboot policy is `never`: not rebooting"
            );
            return Ok(Next::End(pending()));
        };
        // A tip that cannot be read now changes nothing: the reboot is not
        // held hostage by the deploy repository.
        if let Ok(tip) = self.ports.source.remote_tip().await {
            if tip != flight.tip && self.supersedes(&tip, flight).await {
                info!(
                    ferry_phase = flight.phase.name(),
                    "a newer tip ({tip}) arrived before the reboot into release {serial}: it is deployed next"
                );
                return Ok(Next::End(pending()));
            }
        }
        // The gate: the moment, the window, then (asked only then) the
        // switch and rollback units running.
        let mut units = None;
        loop {
            match self.gate(Step::Reboot, None, Some(at), units.as_deref()) {
                Answer::Go if units.is_none() => {
                    units = Some(self.ports.units.activations_running().await?);
                }
                Answer::Go => break,
                Answer::WaitUntil {
                    until,
                    hold: Hold::RebootWindowClosed,
                } => {
                    warn!(
                        ferry_phase = flight.phase.name(),
                        "the reboot's moment passed outside the maintenance window ({windows}); rescheduled"
                    );
                    return Ok(Next::Phase(Phase::AwaitingReboot { at: until }));
                }
                Answer::WaitFor(Hold::RebootWindowClosed) => {
                    return Err(ReconcileError::NoWindowOpening(windows));
                }
                Answer::WaitFor(Hold::UnitsRunning(running)) => {
                    info!(
                        ferry_phase = flight.phase.name(),
                        "not rebooting while {} runs; trying again at the next poll",
                        running.join(", ")
                    );
                    return Ok(Next::Wait(Pass::RebootScheduled { serial, at }));
                }
                // The moment has not come (or a hold yet to be): still
                // scheduled then.
                Answer::WaitUntil { .. } | Answer::WaitFor(_) => {
                    return Ok(Next::Wait(Pass::RebootScheduled { serial, at }))
                }
            }
        }
        let boot = self.ports.reboot.this_boot().await?;
        Ok(Next::Phase(Phase::Rebooting { boot }))
    }

    /// Whether `tip` is a release that would be deployed after `flight`'s:
    /// it verifies, descends from it and has a greater serial. Anything else
    /// (an unsigned or rewound tip — anyone who can push to the branch can
    /// make one — or a fault reading it) leaves the reboot as planned; it is
    /// judged as usual once the deploy has ended.
    pub(super) async fn supersedes(&mut self, tip: &CommitId, flight: &InFlight) -> bool {
        if self.ports.source.fetch(tip).await.is_err() {
            return false;
        }
        let now = self.ports.clock.now();
        let approver_signers = self.approver_signers.as_ref().unwrap_or(&self.signers);
        let verify = self
            .ports
            .source
            .verify(tip, &self.signers, approver_signers, now);
        let Ok(verified) = verify.await else {
            return false;
        };
        let release = verified.release;
        release.release.serial > flight.target.serial
            && matches!(
                self.ports
                    .source
                    .descends_from(&release.commit, &flight.target.commit)
                    .await,
                Ok(true)
            )
    }

    /// In the boot the reboot was recorded in, requests it (again, after a
    /// restart: a request joins one under way, so the host reboots once).
    /// In any other boot, the reboot happened: what booted decides the end.
    pub(super) async fn rebooting(&mut self, flight: &InFlight, boot: &BootId) -> Result<Next> {
        let serial = flight.target.serial;
        if self.ports.reboot.this_boot().await? == *boot {
            info!(
                ferry_phase = flight.phase.name(),
                "rebooting into release {serial} ({})",
                flight.target.toplevel.name()
            );
            self.ports.reboot.request().await?;
            return Ok(Next::Wait(Pass::Rebooting { serial }));
        }
        let booted = self.ports.store.booted_system();
        Ok(Next::End(ending::after_reboot(
            &self.config.host,
            serial,
            &flight.target.toplevel,
            booted.as_ref(),
        )))
    }

    /// A transient fault that held the deploy in its phase is over (the
    /// phase took its step): it is forgotten (saved by the caller with the
    /// next phase) and, if it was reported as an `error` status, the
    /// release says `deploying …` again, as one retried before it was
    /// accepted does. Returns whether a status was recorded.
    pub(super) fn fault_over(&mut self, state: &mut State, flight: &InFlight) -> bool {
        if state.fault.take().is_none() {
            return false;
        }
        let commit = flight.target.commit.clone();
        let reported = state
            .recent_statuses
            .iter()
            .rev()
            .find(|s| s.commit == commit)
            .is_some_and(|s| s.state == StatusState::Error);
        if !reported {
            return false;
        }
        let deploying = wording::deploying(&self.config.host, flight.target.serial);
        self.report(
            state,
            &commit,
            flight.source.as_ref(),
            StatusState::Pending,
            &deploying,
        )
    }

    /// Records the status a phase is announced with, in `state` (saved by
    /// the caller with the phase). Returns whether one was recorded.
    pub(super) fn announce_phase(&mut self, state: &mut State, flight: &InFlight) -> bool {
        let serial = flight.target.serial;
        let description = match &flight.phase {
            Phase::AwaitingReboot { at } => {
                wording::reboot_scheduled(serial, &window::wall_clock_text(*at, &self.ports.clock.zone()))
            }
            Phase::Rebooting { .. } => wording::rebooting_into(serial),
            _ => return false,
        };
        info!(ferry_phase = flight.phase.name(), "{description}");
        let commit = flight.target.commit.clone();
        self.report(
            state,
            &commit,
            flight.source.as_ref(),
            StatusState::Pending,
            &description,
        )
    }

    /// Sees the rollback unit to its end; the deploy failed either way.
    pub(super) async fn rolling_back(
        &mut self,
        flight: &InFlight,
        fresh: bool,
        to: &StorePath,
        problem: &str,
    ) -> Result<Next> {
        let result = match self.see_through(flight, fresh).await? {
            Seen::Ended(result) => result,
            Seen::Held(pass) => return Ok(Next::Wait(pass)),
        };
        Ok(Next::End(ending::after_rollback(problem, to, result)))
    }

    /// Starts the activation the flight's phase names (setting the profile
    /// back first for a rollback), unless the gate holds it: then the wait.
    pub(super) async fn activate(&mut self, flight: &InFlight) -> Result<Option<Pass>> {
        let Some((activation, system, action)) = flight.activation() else {
            return Ok(None);
        };
        let step = match activation {
            Activation::Switch => Step::Activate { action },
            Activation::Rollback => Step::RollBack,
        };
        let serial = flight.target.serial;
        if let Some((hold, until)) = self.gate(step, None, None, None).held() {
            return Ok(Some(held_pass(serial, hold, until)));
        }
        let phase = flight.phase.name();
        match &flight.phase {
            Phase::RollingBack { problem, .. } => {
                warn!(
                    ferry_phase = phase,
                    "{problem}: rolling back to {}",
                    system.name()
                );
                if flight.action.sets_profile() {
                    self.ports.store.set_profile(system).await?;
                }
            }
            _ => info!(ferry_phase = phase, "starting switch-to-configuration {action}"),
        }
        self.ports.units.start(serial, activation, system, action).await?;
        Ok(None)
    }

    /// The one way a switch or rollback unit is followed: started when the
    /// phase is `fresh`; then (or after a restart) a running unit is waited
    /// for, a finished one read; a unit never seen is taken as done when its system
    /// runs, and started otherwise (killed between recording the phase and
    /// starting the unit, or lost with a power cut: activating the same
    /// system again is safe).
    pub(super) async fn see_through(&mut self, flight: &InFlight, fresh: bool) -> Result<Seen> {
        let (activation, system, _) = flight
            .activation()
            .expect("only switching and rolling back have a unit");
        let serial = flight.target.serial;
        if fresh {
            if let Some(held) = self.activate(flight).await? {
                return Ok(Seen::Held(held));
            }
        }
        let units = &mut self.ports.units;
        Ok(Seen::Ended(match units.observe(serial, activation).await? {
            Observed::Running => units.wait(serial, activation).await?,
            Observed::Finished(result) => result,
            Observed::Unknown if self.ports.store.running_system().as_ref() == Some(system) => {
                SwitchResult::Ok
            }
            Observed::Unknown => {
                if let Some(held) = self.activate(flight).await? {
                    return Ok(Seen::Held(held));
                }
                self.ports.units.wait(serial, activation).await?
            }
        }))
    }

    /// Ends a deploy in flight with `end`.
    pub(super) fn finish(&mut self, state: &mut State, flight: &InFlight, end: Ending) -> Result<Pass> {
        let Ending { kind, description } = end;
        let result = match kind {
            OutcomeKind::Success => Pass::Deployed {
                reboot_required: false,
            },
            OutcomeKind::SuccessRebootRequired | OutcomeKind::Installed => Pass::Deployed {
                reboot_required: true,
            },
            OutcomeKind::Failed => Pass::Failed(description.clone()),
            OutcomeKind::Refused => Pass::Refused(description.clone()),
            OutcomeKind::Error => Pass::Error(description.clone()),
        };
        self.record(
            state,
            Record {
                seen: Some(flight.tip.clone()),
                outcome: Outcome {
                    commit: flight.target.commit.clone(),
                    serial: flight.target.serial,
                    toplevel: Some(flight.target.toplevel.clone()),
                    result: kind,
                    description: description.clone(),
                    at: self.ports.clock.now(),
                },
                source: flight.source.clone(),
                status: ending::outcome_status(kind),
                anchor: false,
                not_named: false,
                phase: "done",
                label: kind.as_str(),
                message: description,
                result,
            },
        )
    }
}

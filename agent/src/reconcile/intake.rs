//! A new branch tip, from fetch to acceptance: fetch → verify → judge →
//! the gate → preflight. It ends in a refusal, "already running", a hold
//! (approvals, the deploy window, a closure still uploading), or an accepted
//! release recorded as a deploy in flight, which `flight` drives on.

use ferry_signer::{Approval, VerifyError};

use super::*;

impl Agent {
    /// fetch → verify → judge → the gate: refuse, record that the host
    /// already runs the release, hold it, or go on to deploy it.
    pub(super) async fn new_tip(&mut self, state: &mut State, tip: CommitId) -> Result<Pass> {
        self.ports.source.fetch(&tip).await?;
        info!(ferry_phase = "fetch", "new tip on the deploy branch");
        let (verified, approvals) = match self.verify(&tip).await {
            Ok(v) => v,
            Err(refused) => return self.refuse(state, *refused),
        };
        let serial = verified.release.serial;
        self.tip_expiry = Some((tip.clone(), verified.release.expires));
        Span::current().record("ferry_serial", serial);
        self.metrics.saw_release(serial, verified.release.expires);
        self.release_source = verified.release.source.clone();
        let descends = match &state.anchor {
            Some(anchor) => {
                self.ports
                    .source
                    .descends_from(&verified.commit, &anchor.commit)
                    .await?
            }
            None => false,
        };
        let entry_action = verified.release.hosts.get(&self.config.host).map(|e| e.action);
        let running = match entry_action {
            Some(Action::Boot) => self.ports.store.profile_system(),
            _ => self.ports.store.running_system(),
        };
        let verdict = judge::judge(
            &verified,
            &self.config.host,
            state.anchor.as_ref(),
            descends,
            running.as_ref(),
        );
        match verdict {
            Verdict::Refuse(r) => {
                // Only a release that descends from the anchor may name where
                // to report: a rewound branch could point anywhere.
                let source = match r {
                    judge::Refusal::NoEntry { .. } | judge::Refusal::Derivation { .. } => {
                        verified.release.source.clone()
                    }
                    _ => None,
                };
                let not_named = matches!(r, judge::Refusal::NoEntry { .. });
                let refused = Refused {
                    phase: "select",
                    seen: tip,
                    release: verified.commit.clone(),
                    serial: Some(serial),
                    source,
                    severity: Severity::Failure,
                    summary: r.summary(),
                    detail: r.to_string(),
                    again: false,
                    not_named,
                };
                self.refuse(state, refused)
            }
            Verdict::AlreadyRunning(entry) => self.already_running(state, tip, &verified, entry),
            Verdict::Deploy(entry) => {
                self.take_up(state, tip, &verified, &approvals, entry, running)
                    .await
            }
        }
    }

    /// Verifies `tip` (its approvals' signatures, then the release below)
    /// and that its releaser may release; else the refusal to record.
    async fn verify(&mut self, tip: &CommitId) -> Result<(VerifiedRelease, Vec<Approval>), Box<Refused>> {
        let approver_signers = self.approver_signers.as_ref().unwrap_or(&self.signers);
        let now = self.ports.clock.now();
        let verified_tip = match self
            .ports
            .source
            .verify(tip, &self.signers, approver_signers, now)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                // Expired by this host's clock, which may be wrong: said
                // with the clock's time, and judged again at every poll, so
                // a clock set right deploys the release without a new one.
                let expired = matches!(*e, VerifyError::Expired { .. });
                let (summary, detail) = if expired {
                    let detail = format!(
                        "{e} (by this host's clock, {}: if the clock is wrong, set it right — \
                         the release is judged again at every poll)",
                        now.format("%Y-%m-%d %H:%M:%S UTC")
                    );
                    (wording::stale(&e.summary(), now), detail)
                } else {
                    (e.summary(), e.to_string())
                };
                return Err(Box::new(Refused {
                    phase: "verify",
                    seen: tip.clone(),
                    release: tip.clone(),
                    serial: None,
                    source: None,
                    severity: faults::verify_severity(&e),
                    summary,
                    detail,
                    again: expired,
                    not_named: false,
                }));
            }
        };
        if let Some(by) = clock::behind(now, verified_tip.release.release.created) {
            let r = &verified_tip.release.release;
            warn!("{}", clock::behind_words(r.serial, r.created, now, by));
        }
        let VerifiedTip {
            release: verified,
            approvals,
            ..
        } = verified_tip;
        if let Err(e) = self.config.approvals.policy.may_release(&verified.signer) {
            return Err(Box::new(Refused {
                phase: "verify",
                seen: tip.clone(),
                release: verified.commit.clone(),
                serial: Some(verified.release.serial),
                source: None,
                severity: Severity::Failure,
                summary: wording::may_not_release(&e.principal.to_string()),
                detail: e.to_string(),
                again: false,
                not_named: false,
            }));
        }
        Ok((verified, approvals))
    }

    /// A release this host would deploy, asked at the gate: held for its
    /// approvals or the deploy window, or on to the preflight.
    async fn take_up(
        &mut self,
        state: &mut State,
        tip: CommitId,
        verified: &VerifiedRelease,
        approvals: &[Approval],
        entry: HostEntry,
        running: Option<StorePath>,
    ) -> Result<Pass> {
        Span::current().record("ferry_toplevel", tracing::field::display(&entry.toplevel));
        let tally = approvals::tally(&self.config.approvals.policy, &verified.signer, approvals);
        let step = Step::Release { action: entry.action };
        match self.gate(step, Some(&tally), None, None) {
            Answer::Go => self.preflight(state, tip, verified, entry, running).await,
            Answer::WaitFor(Hold::Approvals(tally)) => self.await_approval(state, tip, verified, &tally),
            Answer::WaitUntil {
                until,
                hold: Hold::DeployWindow,
            } => self.wait_for_window(state, verified, until),
            // Only the two rows above apply to a release (a gate test holds
            // the table to it).
            other => unreachable!("no other hold applies to a release: {other:?}"),
        }
    }

    /// Records that this host already runs its entry of the release: a
    /// success, and the anchor moves to it.
    pub(super) fn already_running(
        &mut self,
        state: &mut State,
        seen: CommitId,
        verified: &VerifiedRelease,
        entry: HostEntry,
    ) -> Result<Pass> {
        Span::current().record("ferry_toplevel", tracing::field::display(&entry.toplevel));
        let serial = verified.release.serial;
        let description = wording::runs_release(&self.config.host, serial);
        let record = Record {
            seen: Some(seen),
            outcome: Outcome {
                commit: verified.commit.clone(),
                serial,
                toplevel: Some(entry.toplevel),
                result: OutcomeKind::Success,
                description: description.clone(),
                at: self.ports.clock.now(),
            },
            source: verified.release.source.clone(),
            status: StatusState::Success,
            anchor: true,
            not_named: false,
            phase: "select",
            label: "already-running",
            message: description,
            result: Pass::AlreadyRunning,
        };
        self.record(state, record)
    }

    /// A release this host would deploy, still short of approvals (the
    /// two-person rule): nothing on the host changes. The tip is remembered
    /// with one `pending` status on the release, saved in one write (a
    /// status already posted is not posted again); the next approval moves
    /// the tip, and the release is judged again.
    pub(super) fn await_approval(
        &mut self,
        state: &mut State,
        seen: CommitId,
        verified: &VerifiedRelease,
        tally: &Tally,
    ) -> Result<Pass> {
        let serial = verified.release.serial;
        let description = tally.awaiting(serial);
        info!(ferry_phase = "approval", "{description}");
        self.report(
            state,
            &verified.commit,
            verified.release.source.as_ref(),
            StatusState::Pending,
            &description,
        );
        state.last_seen_tip = Some(seen);
        self.state.save(state)?;
        self.flush(state);
        Ok(Pass::AwaitingApproval {
            serial,
            approved: tally.counted.clone(),
            required: tally.required,
        })
    }

    /// The closure preflight: the release is refused, waited for, or accepted.
    pub(super) async fn preflight(
        &mut self,
        state: &mut State,
        seen: CommitId,
        verified: &VerifiedRelease,
        entry: HostEntry,
        running: Option<StorePath>,
    ) -> Result<Pass> {
        let release = verified.commit.clone();
        let serial = verified.release.serial;
        let source = verified.release.source.clone();
        info!(
            ferry_phase = "preflight", signer = %verified.signer.principal,
            "deploying release {serial} ({})", entry.action
        );
        let now = self.ports.clock.now();
        let first_seen_missing = state::Sighting::since_for(state.closure_missing.as_ref(), &release)
            // A clock moved back since: the wait starts again now.
            .filter(|first| clock::since(*first, now) == *first);
        // While a persisting fault is reported, the release keeps its
        // `error` status until the fault clears (then "deploying" again).
        let fault_reported = state
            .recent_statuses
            .iter()
            .rev()
            .find(|s| s.commit == release)
            .is_some_and(|s| s.state == StatusState::Error);
        let deploying = wording::deploying(&self.config.host, serial);
        if first_seen_missing.is_none() && !fault_reported {
            self.announce(state, &release, source.as_ref(), &deploying)
                .await?;
        }
        let checked = crate::reconcile::ports::checked_preflight(
            &mut *self.ports.caches,
            &mut *self.ports.store,
            &entry.toplevel,
        )
        .await;
        let preflight = match checked {
            Ok(p) => Ok(p),
            // Nix could not be asked: retried, like any fault outside the release.
            Err(PreflightError::Store(e)) => return Err(e.into()),
            Err(PreflightError::Cache(e)) => Err(e),
        };
        let preflight = match preflight {
            Ok(p) => p,
            Err(e) if faults::cache_fault(&e) == faults::Fault::Transient => return Err(e.into()),
            Err(e @ CacheError::NotFound { .. })
                if faults::may_still_be_uploading(
                    verified.release.created,
                    first_seen_missing.unwrap_or(now),
                    now,
                ) =>
            {
                return self.wait_for_upload(state, verified, &e, first_seen_missing, now);
            }
            Err(e) => {
                let refused = Refused {
                    phase: "preflight",
                    seen,
                    release,
                    serial: Some(serial),
                    source,
                    severity: faults::cache_severity(&e),
                    summary: e.summary(),
                    detail: e.to_string(),
                    again: false,
                    not_named: false,
                };
                return self.refuse(state, refused);
            }
        };
        if fault_reported {
            self.announce(state, &release, source.as_ref(), &deploying)
                .await?;
        }
        state.closure_missing = None;
        info!(
            ferry_phase = "preflight",
            paths = preflight.paths,
            missing = preflight.missing,
            download_bytes = preflight.download_bytes,
            unpacked_bytes = preflight.unpacked_bytes,
            "closure preflight passed"
        );
        self.accept(state, seen, verified, entry, running).await
    }

    /// Posts the pending status `description` on the release and its source,
    /// unless it is the last thing said there.
    pub(super) async fn announce(
        &mut self,
        state: &mut State,
        release: &CommitId,
        source: Option<&CommitId>,
        description: &str,
    ) -> Result<()> {
        if self.report(state, release, source, StatusState::Pending, description) {
            self.state.save(state)?;
            if self.flush(state) {
                self.ports.statuses.deliver().await;
            }
        }
        Ok(())
    }

    /// A closure missing from the cache shortly after its release was made:
    /// CI may still be uploading it. Nothing is refused or remembered (the
    /// next poll tries again, until the grace period ends), and the release
    /// says so on the forge once.
    pub(super) fn wait_for_upload(
        &mut self,
        state: &mut State,
        verified: &VerifiedRelease,
        missing: &CacheError,
        first_seen_missing: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Pass> {
        let serial = verified.release.serial;
        let until = faults::upload_deadline(verified.release.created, first_seen_missing.unwrap_or(now));
        warn!(
            ferry_phase = "preflight",
            "{missing}; waiting for CI to finish uploading (until {until})"
        );
        if first_seen_missing.is_none() {
            // Saved with the status, so a restart neither says it again nor
            // restarts the wait.
            state.closure_missing = Some(state::Sighting {
                commit: verified.commit.clone(),
                since: now,
            });
            let description = wording::waiting_for_closure(serial);
            let source = verified.release.source.as_ref();
            self.report(
                state,
                &verified.commit,
                source,
                StatusState::Pending,
                &description,
            );
            self.state.save(state)?;
            self.flush(state);
        }
        Ok(Pass::WaitingForClosure { serial, until })
    }

    /// A release outside the deploy window: nothing is recorded (the next
    /// poll looks again), and the release says until when it waits, once.
    pub(super) fn wait_for_window(
        &mut self,
        state: &mut State,
        verified: &VerifiedRelease,
        until: DateTime<Utc>,
    ) -> Result<Pass> {
        let serial = verified.release.serial;
        let description =
            wording::waits_for_window(serial, &window::wall_clock_text(until, &self.ports.clock.zone()));
        let source = verified.release.source.as_ref();
        if self.report(
            state,
            &verified.commit,
            source,
            StatusState::Pending,
            &description,
        ) {
            info!(ferry_phase = "window", "{description}");
            self.state.save(state)?;
            self.flush(state);
        }
        Ok(Pass::WaitingForWindow { serial, until })
    }

    /// Accepts the release: the anchor moves and the deploy is recorded as
    /// realising, with what was running and which units had already failed,
    /// before anything on the host changes.
    pub(super) async fn accept(
        &mut self,
        state: &mut State,
        seen: CommitId,
        verified: &VerifiedRelease,
        entry: HostEntry,
        running: Option<StorePath>,
    ) -> Result<Pass> {
        let failed_before = match self.ports.units.failed_units().await {
            Ok(units) => units,
            Err(e @ SystemdError::Connect(_)) => return Err(ReconcileError::SystemdUnreachable(e)),
            Err(_) => Vec::new(),
        };
        let release = verified.commit.clone();
        let serial = verified.release.serial;
        let flight = InFlight {
            tip: seen,
            target: Target {
                commit: release.clone(),
                serial,
                toplevel: entry.toplevel,
            },
            source: verified.release.source.clone(),
            action: entry.action,
            phase: Phase::Realising,
            previous: running,
            failed_before,
            started: self.ports.clock.now(),
        };
        // From here the release is accepted: the anchor moves even if the
        // deploy fails, so an older release can never be served again.
        state.anchor = Some(Anchor {
            commit: release,
            serial,
        });
        state.in_flight = Some(flight.clone());
        self.state.save(state)?;
        self.advance(state, flight, true).await
    }
}

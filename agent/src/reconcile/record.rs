//! Recording: the one place an ending is logged, saved and reported
//! (`record`), commit statuses recorded with the state and moved to the
//! outbox (`report`, `flush`, `deliver`), and transient faults remembered and,
//! once they persist, reported.

use super::*;
use crate::policy::reporting::Route;

impl Agent {
    /// Records a status on the release commit and, if given, its source
    /// commit in `state` (not yet saved): the caller saves it with whatever
    /// it reports, then [`Agent::flush`] moves it to the outbox. A status
    /// identical to the last one recorded for its commit and context is not
    /// recorded again (`dedup::is_news`). With receipts on, the release's
    /// status is also this host's receipt, and only the statuses
    /// `report.statuses` lets through reach the forge
    /// (`reporting::to_forge`). Returns whether anything was recorded.
    pub(super) fn report(
        &mut self,
        state: &mut State,
        release: &CommitId,
        source: Option<&CommitId>,
        status: StatusState,
        description: &str,
    ) -> bool {
        self.report_routed(state, release, source, status, description, Route::default())
    }

    /// [`Agent::report`], where `route` may keep the status from the forge
    /// or the receipt (a release that does not name this host).
    fn report_routed(
        &mut self,
        state: &mut State,
        release: &CommitId,
        source: Option<&CommitId>,
        status: StatusState,
        description: &str,
        route: Route,
    ) -> bool {
        use rand_core::RngCore;
        let context = self.config.report.context_for(&self.config.host);
        let receipts = self.config.report.receipts.is_some();
        let mut recorded = false;
        for commit in std::iter::once(release).chain(source) {
            let status = CommitStatus::new(commit.clone(), status, &context, description);
            if !dedup::is_news(&state.recent_statuses, &status) {
                continue;
            }
            dedup::remember_status(&mut state.recent_statuses, status.clone());
            recorded = true;
            let red = state.red_on_forge.contains(commit);
            let to_forge = route.forge && reporting::to_forge(self.config.report.statuses, red, status.state);
            if to_forge && !red && reporting::is_red(status.state) {
                state.red_on_forge.push(commit.clone());
                let excess = state.red_on_forge.len().saturating_sub(dedup::RECENT_STATUSES);
                state.red_on_forge.drain(..excess);
            }
            let receipt = (route.receipt && receipts && commit == release).then(|| ReceiptNote {
                source: source.cloned(),
            });
            if !to_forge && receipt.is_none() {
                continue;
            }
            state.unsent.push(Unsent {
                id: rand_core::OsRng.next_u64(),
                status,
                to_forge,
                receipt,
            });
        }
        recorded
    }

    /// Moves the statuses recorded in `state` (already saved) to the outbox,
    /// oldest first, then saves the state without them. One that cannot be
    /// queued (a full disk) stays recorded and is queued at the next
    /// reconcile: never dropped. Returns whether the outbox may be delivered
    /// now: not when the state still lists statuses the outbox already holds
    /// (the state could not be saved), since a delivered entry would then
    /// be queued a second time.
    pub(super) fn flush(&mut self, state: &mut State) -> bool {
        let mut queued = 0;
        for unsent in &state.unsent {
            if let Err(e) = self.ports.statuses.queue(unsent) {
                error!(
                    "cannot queue the commit status for {}: {e}; it stays in state.json and is queued at the next poll",
                    unsent.status.commit
                );
                break;
            }
            queued += 1;
        }
        if queued == 0 {
            return true;
        }
        let mut rest = state.clone();
        rest.unsent.drain(..queued);
        match self.state.save(&rest) {
            Ok(()) => {
                *state = rest;
                true
            }
            Err(e) => {
                error!("commit statuses queued, but {e}; they are delivered once state.json can be written");
                false
            }
        }
    }

    /// Moves recorded statuses to the outbox and delivers what waits.
    pub(super) async fn deliver(&mut self) {
        let deliverable = match self.state.load() {
            Ok(mut state) => self.flush(&mut state),
            // Reported by the reconcile; the outbox holds nothing unrecorded.
            Err(_) => true,
        };
        if deliverable {
            self.ports.statuses.deliver().await;
        }
    }

    /// A reconcile of `release` failed with a transient fault `e` (it is
    /// retried): remembers when this first happened to the release and,
    /// once that is `report.error_after` ago, reports it as one `error`
    /// status (its words and start never change, so `is_news` posts it
    /// once). Returns `e`.
    pub(super) fn fault_persists(&mut self, release: &CommitId, e: ReconcileError) -> ReconcileError {
        let Ok(mut state) = self.state.load() else {
            return e;
        };
        let now = self.ports.clock.now();
        let mut changed = false;
        let first = state::Sighting::since_for(state.fault.as_ref(), release)
            // A clock moved back since: the fault is timed from now.
            .filter(|first| clock::since(*first, now) == *first);
        let since = match first {
            Some(since) => since,
            None => {
                state.fault = Some(state::Sighting {
                    commit: release.clone(),
                    since: now,
                });
                changed = true;
                now
            }
        };
        if faults::reported_at_once(&e) || faults::fault_persists(since, now, self.config.report.error_after)
        {
            let description = wording::fault_description(&e.summary(), since);
            let source = self.release_source.clone();
            if self.report(
                &mut state,
                release,
                source.as_ref(),
                StatusState::Error,
                &description,
            ) {
                warn!("{description}: reported as an error status");
                changed = true;
            }
        }
        // The usual retry has nothing new to remember: no write.
        if !changed {
            return e;
        }
        if let Err(save) = self.state.save(&state) {
            warn!("cannot remember when the fault began: {save}");
            return e;
        }
        self.flush(&mut state);
        e
    }

    /// A reconcile got through: a fault remembered is over.
    pub(super) fn fault_cleared(&mut self) {
        let Ok(mut state) = self.state.load() else {
            return;
        };
        if state.fault.take().is_some() {
            if let Err(e) = self.state.save(&state) {
                warn!("cannot forget a fault that cleared: {e}");
            }
        }
    }

    /// Records a refusal: the tip is remembered (so it is not verified again)
    /// but the anchor does not move and nothing is deployed.
    pub(super) fn refuse(&mut self, state: &mut State, r: Refused) -> Result<Pass> {
        if r.serial.is_none() {
            // Not verified, so no serial is known: the journal has said 0.
            Span::current().record("ferry_serial", 0);
        }
        self.record(
            state,
            Record {
                seen: (!r.again).then_some(r.seen),
                outcome: Outcome {
                    commit: r.release,
                    serial: r.serial.unwrap_or(0),
                    toplevel: None,
                    result: OutcomeKind::Refused,
                    description: r.summary,
                    at: self.ports.clock.now(),
                },
                source: r.source,
                status: r.severity.status(),
                anchor: false,
                not_named: r.not_named,
                phase: r.phase,
                label: "refused",
                message: format!("release refused: {}", r.detail),
                result: Pass::Refused(r.detail),
            },
        )
    }

    /// The one place a reconcile's ending is recorded: logged, then written
    /// to the state (no deploy in flight any more, the tip remembered, the
    /// outcome kept) together with its commit statuses, in one durable
    /// write, then the statuses moved to the outbox (the release's recent
    /// statuses forgotten in the same write). A crash can never leave
    /// the ending recorded without its statuses; a write that fails (a full
    /// disk) records nothing, and the next reconcile comes to the ending
    /// again.
    pub(super) fn record(&mut self, state: &mut State, record: Record) -> Result<Pass> {
        let Record {
            seen,
            outcome,
            source,
            status,
            anchor,
            not_named,
            phase,
            label,
            message,
            result,
        } = record;
        if outcome.result.is_success() {
            info!(ferry_phase = phase, ferry_outcome = label, "{message}");
        } else {
            error!(ferry_phase = phase, ferry_outcome = label, "{message}");
        }
        state.in_flight = None;
        let judged_again = seen.is_none();
        if let Some(seen) = seen {
            state.last_seen_tip = Some(seen);
        }
        if anchor {
            state.anchor = Some(Anchor {
                commit: outcome.commit.clone(),
                serial: outcome.serial,
            });
        }
        if outcome.result.is_success() {
            state.last_success = Some(outcome.clone());
        }
        state.last_outcome = Some(outcome.clone());
        let route = match not_named {
            false => Route::default(),
            true => reporting::not_named(self.config.report.statuses, self.config.report.receipts.is_some()),
        };
        self.report_routed(
            state,
            &outcome.commit,
            source.as_ref(),
            status,
            &outcome.description,
            route,
        );
        // Nothing more is posted for this release: its statuses and first
        // sightings are forgotten. Those of another release stay: the
        // branch may be rewound to it (past this refused commit), and the
        // forge already has what was said about it.
        // A tip judged again at the next poll keeps them: the same words
        // then are not news.
        let ended = |c: &CommitId| *c == outcome.commit || source.as_ref() == Some(c);
        if !judged_again {
            state.recent_statuses.retain(|s| !ended(&s.commit));
            state.red_on_forge.retain(|c| !ended(c));
        }
        if state
            .closure_missing
            .as_ref()
            .is_some_and(|s| s.commit == outcome.commit)
        {
            state.closure_missing = None;
        }
        if state.fault.as_ref().is_some_and(|s| s.commit == outcome.commit) {
            state.fault = None;
        }
        self.state.save(state)?;
        self.flush(state);
        Ok(result)
    }
}

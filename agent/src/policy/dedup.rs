//! Which commit statuses are worth posting: a status identical to the last
//! one recorded for its commit and context is not news. The memory it
//! consults is `State::recent_statuses`, saved with the statuses it records.

use crate::io::forge::CommitStatus;

/// How many (commit, context) pairs [`remember_status`] keeps: a release
/// reports on two commits (itself and its source), so this covers the
/// release being worked on and the one before, whatever the order.
pub const RECENT_STATUSES: usize = 4;

/// Whether `status` is worth posting: it is not, when the last status
/// recorded for its commit and context (in `recent`) is identical (same
/// state and description). A retried release (a cache answering 503 for a
/// day) then says `pending` once, not once per poll — the forge keeps only
/// so many statuses per commit and context — while anything new about it
/// (another description, the final state) is posted.
pub fn is_news(recent: &[CommitStatus], status: &CommitStatus) -> bool {
    recent
        .iter()
        .rev()
        .find(|r| r.commit == status.commit && r.context == status.context)
        != Some(status)
}

/// `recent` after `status` was recorded: it replaces the last status of its
/// commit and context, and only the newest [`RECENT_STATUSES`] pairs are
/// kept, oldest first.
pub fn remember_status(recent: &mut Vec<CommitStatus>, status: CommitStatus) {
    recent.retain(|r| !(r.commit == status.commit && r.context == status.context));
    recent.push(status);
    let excess = recent.len().saturating_sub(RECENT_STATUSES);
    recent.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::forge::StatusState;
    use ferry_signer::CommitId;

    fn status(commit: char, state: StatusState, context: &str, description: &str) -> CommitStatus {
        let commit: CommitId = commit.to_string().repeat(40).parse().unwrap();
        CommitStatus::new(commit, state, context, description)
    }

    #[test]
    fn only_a_status_unlike_the_last_of_its_commit_and_context_is_news() {
        let deploying = status(
            '1',
            StatusState::Pending,
            "ferry/web1",
            "deploying release 1 to web1",
        );
        let mut recent = Vec::new();
        assert!(is_news(&recent, &deploying), "nothing said yet");
        remember_status(&mut recent, deploying.clone());
        assert!(!is_news(&recent, &deploying), "the same again");
        // Any difference is news: description, state, commit or context.
        let differs = [
            status(
                '1',
                StatusState::Pending,
                "ferry/web1",
                "release 1: waiting for the closure",
            ),
            status(
                '1',
                StatusState::Success,
                "ferry/web1",
                "deploying release 1 to web1",
            ),
            status(
                '2',
                StatusState::Pending,
                "ferry/web1",
                "deploying release 1 to web1",
            ),
            status(
                '1',
                StatusState::Pending,
                "ferry/web2",
                "deploying release 1 to web1",
            ),
        ];
        for other in &differs {
            assert!(is_news(&recent, other), "{other:?}");
        }
        // Only the last status of a commit and context counts: saying the
        // first thing again after another is news.
        remember_status(&mut recent, differs[0].clone());
        assert!(is_news(&recent, &deploying));
        assert!(!is_news(&recent, &differs[0]));
        assert_eq!(recent, [differs[0].clone()], "one per commit and context");
    }

    #[test]
    fn the_memory_of_statuses_is_bounded_and_keeps_the_newest() {
        let mut recent = Vec::new();
        let all: Vec<_> = ['1', '2', '3', '4', '5', '6']
            .into_iter()
            .map(|c| status(c, StatusState::Pending, "ferry/web1", "deploying"))
            .collect();
        for s in &all {
            remember_status(&mut recent, s.clone());
        }
        assert_eq!(recent, all[all.len() - RECENT_STATUSES..]);
        assert!(is_news(&recent, &all[0]), "forgotten");
        assert!(!is_news(&recent, &all[5]));
        // Recording an old pair again moves it to the newest end.
        remember_status(&mut recent, all[2].clone());
        assert_eq!(recent.last(), Some(&all[2]));
        assert_eq!(recent.len(), RECENT_STATUSES);
    }
}

//! A release pushed before CI finished uploading its closure: the agent waits
//! (retries, remembers only when it first saw the closure missing, posts one
//! status) for a grace period after the release's `created` time, then
//! deploys once the closure is there; a release found missing long after it
//! was made is waited for an hour from that sighting, then refused. Real Nix
//! store and signed cache.

use std::path::Path;

use ferry_agent::config::Config;
use ferry_agent::policy::window::HostZone;
use ferry_agent::reconcile::ports::Clock;
use ferry_agent::reconcile::{Agent, Pass};

use ferry_test_support::deploy_repo::DeployRepo;
use ferry_test_support::forge_recorder::Recorder;
use ferry_test_support::{nix, unique};

use crate::common::{agent_toml, runtime};

fn agent(dir: &Path, deploy: &DeployRepo, cache: &nix::Cache, forge: &Recorder) -> Agent {
    let token = dir.join("forge-token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let signers = dir.join("allowed_signers");
    std::fs::write(&signers, deploy.key.allowed_signers_line("ci@example.com")).unwrap();
    let rest = format!(
        "[cache]\nsubstituters = [\"{}\"]\ntrusted_public_keys = [\"{}\"]\n\
         [report]\nforge = \"gitea\"\napi_url = \"{}\"\nrepository = \"ops/deploy\"\ntoken_file = \"{}\"\n",
        cache.url(),
        cache.public_key,
        forge.url(),
        token.display(),
    );
    let url = deploy.path.to_str().unwrap();
    let text = agent_toml("web1", &dir.join("state"), url, &signers, &rest);
    ferry_agent::app::live::agent(Config::parse(&text, Path::new("agent.toml"), || None).unwrap()).unwrap()
}

/// Builds a toplevel, puts its signed closure in `cache`, then removes it from
/// the local store, so only the cache can provide it.
fn only_in_cache(dir: &Path, cache: &nix::Cache, seed: &str) -> String {
    let toplevel = nix::build_toplevel(dir, "web1", &unique(seed), 3);
    cache.copy(&toplevel);
    cache.sign(&toplevel);
    nix::delete(&nix::closure(&toplevel));
    toplevel
}

#[test]
fn a_closure_still_uploading_is_waited_for_then_refused_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = DeployRepo::new(dir.path());
    let cache = nix::Cache::new(&dir.path().join("cache"), "upload-wait-1");
    let toplevel = only_in_cache(dir.path(), &cache, "uploading");
    // "Not uploaded yet": the cache's files are elsewhere for now.
    let uploaded = cache.dir.clone();
    let pending = dir.path().join("cache-upload-in-progress");
    std::fs::rename(&uploaded, &pending).unwrap();
    std::fs::create_dir_all(&uploaded).unwrap();
    std::fs::rename(pending.join("nix-cache-info"), uploaded.join("nix-cache-info")).unwrap();

    let fresh = deploy.release("web1", &toplevel);
    let forge = Recorder::start();
    let mut agent = agent(dir.path(), &deploy, &cache, &forge);
    let rt = runtime();
    for attempt in 0..2 {
        let waiting = rt.block_on(agent.reconcile()).unwrap();
        assert!(
            matches!(waiting, Pass::WaitingForClosure { serial: 1, .. }),
            "attempt {attempt}: {waiting:?}"
        );
        let state = agent.state.load().unwrap();
        assert_eq!(
            state.last_seen_tip, None,
            "the tip is not remembered while waiting"
        );
        assert_eq!(state.anchor, None);
    }
    // A restart while waiting (a new agent on the same state directory):
    // the wait goes on from the first sighting, nothing is posted again.
    drop(agent);
    let mut agent = self::agent(dir.path(), &deploy, &cache, &forge);
    let waiting = rt.block_on(agent.reconcile()).unwrap();
    assert!(
        matches!(waiting, Pass::WaitingForClosure { serial: 1, .. }),
        "after a restart: {waiting:?}"
    );
    // One "deploying" and one "waiting" status, not a pair per attempt.
    let statuses = forge.statuses();
    let waiting: Vec<_> = statuses
        .iter()
        .filter(|(c, _, d)| *c == fresh && d.contains("waiting for the closure"))
        .collect();
    assert_eq!(waiting.len(), 1, "{statuses:?}");
    assert_eq!(waiting[0].1, "pending");
    assert_eq!(
        statuses
            .iter()
            .filter(|(_, _, d)| d.starts_with("deploying release 1"))
            .count(),
        1,
        "{statuses:?}"
    );

    // The upload finishes: the preflight passes and the deploy goes on (to
    // systemd, which this test does not have: the deploy tests cover the rest).
    std::fs::remove_dir_all(&uploaded).unwrap();
    std::fs::rename(&pending, &uploaded).unwrap();
    let err = rt.block_on(agent.reconcile()).unwrap_err();
    assert!(
        format!("{err:#}").contains("systemd"),
        "past the preflight: {err:#}"
    );

    // A release created long ago whose closure is missing (the host was
    // away, or its clock is ahead): waited for an hour from this first
    // sighting, not refused before the host has waited at all.
    let stale_toplevel = nix::build_toplevel(dir.path(), "web1", &unique("never-uploaded"), 0);
    nix::delete(&nix::closure(&stale_toplevel));
    let two_hours_ago = chrono::Utc::now() - chrono::Duration::hours(2);
    let old = deploy.release_by(&deploy.key, "web1", &stale_toplevel, two_hours_ago);
    let before = chrono::Utc::now();
    match rt.block_on(agent.reconcile()).unwrap() {
        Pass::WaitingForClosure { serial: 2, until } => {
            assert!(until >= before + chrono::Duration::hours(1), "{until}")
        }
        r => panic!("expected a wait, got {r:?}"),
    }
    // An hour and a minute later (the clock moved on), still missing: refused.
    agent.ports.clock = Box::new(Later(chrono::Duration::minutes(61)));
    match rt.block_on(agent.reconcile()).unwrap() {
        Pass::Refused(why) => assert!(why.contains("in none of the binary caches"), "{why}"),
        r => panic!("expected a refusal, got {r:?}"),
    }
    assert_eq!(
        agent.state.load().unwrap().last_seen_tip.map(|t| t.to_string()),
        Some(old)
    );
}

/// The system clock, moved on by a fixed amount.
struct Later(chrono::Duration);

impl Clock for Later {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + self.0
    }
    fn zone(&self) -> HostZone {
        HostZone::Local
    }
}

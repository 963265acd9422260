//! Forge answers (commit status pages from GitHub, Gitea/Forgejo, GitLab) and
//! their pagination headers: parsing never panics, the newest-per-context
//! view never grows, and a next page is only ever the one after.
#![no_main]
use ferry_signer::forge::{latest_per_context, next_page, parse_page, ForgeKind, PageHeaders};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in [ForgeKind::Github, ForgeKind::Gitea, ForgeKind::Gitlab] {
        if let Ok(statuses) = parse_page(kind, data) {
            let n = statuses.len();
            let latest = latest_per_context(statuses);
            assert!(latest.len() <= n);
            assert!(latest.iter().all(|(context, s)| *context == s.context));
        }
        let text = String::from_utf8_lossy(data).into_owned();
        let headers = PageHeaders {
            link: Some(text.clone()),
            total_count: Some(text.clone()),
            next_page: Some(text),
        };
        if let Some(page) = next_page(kind, 7, 1, &headers) {
            assert_eq!(page, 8);
        }
        assert_eq!(next_page(kind, 7, 0, &headers), None);
    }
});

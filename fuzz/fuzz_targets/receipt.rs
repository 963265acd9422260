//! Host receipts as the fleet commands read them from an untrusted bucket:
//! a receipt object judged against pinned host keys, a ListObjectsV2 page,
//! and a host-keys file. Nothing panics; a document that parses renders
//! back to the same bytes (the signature covers exactly those); a receipt
//! judged genuine names the host and release it was read for; a listing
//! page holds at most 1,000 non-empty keys and a next token only when it
//! goes on; a host-keys file names no more hosts than it writes.
#![no_main]
use ferry_signer::receipt::{self, HostKeys, Receipt, Verdict};
use ferry_signer::receipt_bucket::{parse_list, PAGE_KEYS};
use ferry_signer::{CommitId, HostName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(r) = Receipt::parse(&text) {
        assert_eq!(r.render(), text, "a document that parses renders back to itself");
    }
    let release: CommitId = "9fceb02d0ae598e95dc970b74767f19372d61af8".parse().unwrap();
    let host: HostName = "web1".parse().unwrap();
    let keys = HostKeys::parse(
        "web1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOkSV0VUGr8O1m7qmuHw0nc4Xm1tG3f5bS6yDbuOpL8p\n",
    )
    .unwrap();
    if let Verdict::Genuine(r) = receipt::verify(data, &release, &host, &keys) {
        assert_eq!((r.release, r.host), (release, host));
    }
    if let Ok(page) = parse_list(data) {
        assert!(page.keys.len() <= PAGE_KEYS as usize);
        assert!(page.keys.iter().all(|k| !k.is_empty()));
        assert!(page.next.as_ref().is_none_or(|t| !t.is_empty()));
    }
    if let Ok(parsed) = HostKeys::parse(&text) {
        // Every host named once at most: a line names one, or a list.
        assert!(parsed.len() <= text.lines().count() + text.matches(',').count());
    }
});

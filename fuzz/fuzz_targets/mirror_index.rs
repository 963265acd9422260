//! A static mirror's index files (`info/refs`, `objects/info/packs`), as an
//! agent reads them from an untrusted server: parsing never panics; every
//! ref accepted is a valid ref name with a commit id, and every pack
//! accepted is a plain `pack-<hash>.pack` name (never a path); and what is
//! accepted prints back, as the mirror writes it, to the same list.
#![no_main]
use ferry_signer::mirror::{is_pack_name, parse_packs, parse_refs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(refs) = parse_refs(&text) {
        for (_, name) in &refs {
            assert!(git2::Reference::is_valid_name(name), "{name:?}");
        }
        let printed: String = refs.iter().map(|(id, name)| format!("{id}\t{name}\n")).collect();
        assert_eq!(parse_refs(&printed).unwrap(), refs);
    }
    if let Ok(packs) = parse_packs(&text) {
        for name in &packs {
            assert!(is_pack_name(name) && !name.contains('/'), "{name:?}");
        }
        let printed: String = packs.iter().map(|p| format!("P {p}\n")).collect();
        assert_eq!(parse_packs(&printed).unwrap(), packs);
    }
});

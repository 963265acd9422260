//! `docs/cli.md` shows `ferry-signer --help` and each subcommand's help,
//! rendered from the binary itself; this fails when they drift.

use crate::common::cli_reference;

#[test]
fn cli_reference_matches_the_binary() {
    let rendered = cli_reference::render(env!("CARGO_BIN_EXE_ferry-signer"), "ferry-signer");
    cli_reference::check_region(
        &cli_reference::cli_md(env!("CARGO_MANIFEST_DIR")),
        "ferry-signer",
        &rendered,
        "FERRY_UPDATE_REFERENCE=1 cargo test -p ferry-signer --test integration reference",
    );
}

# Ferry's two binaries from this workspace, built against Cargo.lock.
# `cargoBuildFlags` picks the crate; tests are not run here (they need root,
# a throwaway systemd and network on loopback: see scripts/test).
{ lib, rustPlatform, pkg-config, zlib, crate }:

let
  src = lib.fileset.toSource {
    root = ../.;
    # test-support (a dev-dependency only) and tests (the end-to-end suites)
    # are workspace members: cargo needs their manifests to load the
    # workspace.
    fileset = lib.fileset.unions [ ../Cargo.toml ../Cargo.lock ../agent ../signer ../test-support ../tests ];
  };
in
rustPlatform.buildRustPackage {
  pname = crate;
  version = (lib.importTOML ../Cargo.toml).workspace.package.version;
  inherit src;
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "-p" crate ];
  nativeBuildInputs = [ pkg-config ];
  # No OpenSSL: HTTPS (forge and git) is rustls; libgit2 needs only zlib.
  buildInputs = [ zlib ];
  doCheck = false;
  meta = {
    description = "Ferry: GitOps pull deployments for NixOS fleets (${crate})";
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = crate;
    platforms = lib.platforms.linux;
  };
}

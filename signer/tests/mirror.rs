//! `ferry-signer mirror --to s3://…` against a real S3 server (moto, every
//! request signed and checked): the first run writes the whole branch, a
//! second finds it up to date, a new release adds one pack, and what is in
//! the bucket reads back as the mirror's layout; wrong credentials are
//! refused naming the object.

use ferry_signer::mirror::{self, S3Store, Store};
use ferry_test_support::deploy_repo::DeployRepo;
use ferry_test_support::s3::Moto;

use crate::common::*;

const WEB1_A: &str = "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1";
const WEB1_B: &str = "/nix/store/1c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1";

#[test]
fn a_mirror_is_written_to_a_bucket_one_pack_per_update() {
    let sb = Sandbox::new();
    let deploy = DeployRepo::new(&sb.path(""));
    let first = deploy.release("web1", WEB1_A);
    let moto = Moto::start();
    let empty = sb.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    moto.upload_cache("deploy-mirror", "eu-central-1", &empty);
    let url = format!(
        "s3://deploy-mirror/ops/deploy.git?region=eu-central-1&endpoint={}",
        moto.endpoint()
    );
    let key = [
        ("AWS_ACCESS_KEY_ID", moto.key.access_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", moto.key.secret_access_key.as_str()),
    ];
    let repo = deploy.path.to_str().unwrap();
    let run = |env: &[(&str, &str)]| sb.signer(&["mirror", "--repo", repo, "--to", &url], env);

    let out = assert_ok(&run(&key));
    assert!(
        out.contains(&format!("deploy now at {first}; added pack-")),
        "{out}"
    );
    assert!(assert_ok(&run(&key)).contains("is up to date"));
    let second = deploy.release("web1", WEB1_B);
    let out = assert_ok(&run(&key));
    assert!(
        out.contains(&format!("deploy now at {second}; added pack-")),
        "{out}"
    );

    // Read back with the same signed client: the layout an agent reads.
    let env = |k: &str| key.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
    let store = S3Store::open(&url, &env).unwrap();
    let layout = mirror::read_layout(&store).unwrap();
    assert_eq!(layout.refs.len(), 1);
    assert_eq!(layout.refs[0].0.to_string(), second);
    assert_eq!(layout.packs.len(), 2, "{layout:?}");
    for pack in &layout.packs {
        assert!(store.exists(&format!("objects/pack/{pack}")).unwrap(), "{pack}");
        let idx = pack.replace(".pack", ".idx");
        assert!(store.exists(&format!("objects/pack/{idx}")).unwrap(), "{idx}");
    }
    assert_eq!(store.read("HEAD").unwrap().unwrap(), b"ref: refs/heads/deploy\n");

    // Wrong credentials: refused, naming the object, the secret never shown.
    let wrong = [
        ("AWS_ACCESS_KEY_ID", moto.key.access_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
    ];
    let out = run(&wrong);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("deploy-mirror") && err.contains("HTTP 403"), "{err}");
    assert!(!err.contains("not-the-secret"), "{err}");
}

//! Real S3 servers on loopback. First moto's server mode (PyPI, installed into the
//! project's virtualenv by `scripts/install-deps`), with request
//! authentication on: an IAM user and its access key are made through the
//! IAM API in the first unauthenticated requests moto allows, and every
//! request after that (bucket creation, uploads, the agent's reads) must be
//! signed with that key. The fixture's own requests (IAM, the bucket, the
//! uploads) are made with boto3, AWS's Python SDK: what the agent reads
//! was written by a client other than itself. Then [`S3rver`], a second,
//! independent implementation (npm's s3rver), so what Ferry writes and
//! lists is not tuned to one server's leniencies; it checks that a request
//! carries a well-formed SigV4 header with a known key and the
//! `x-amz-content-sha256` S3 requires, but not the signature itself (its
//! source says SigV4 calculation is unimplemented): moto is the one that
//! refuses a wrong signature.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{free_port, wait_for_port};

/// Where `scripts/install-deps` puts the virtualenv.
fn venv() -> PathBuf {
    std::env::var_os("FERRY_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/ferry-test/venv".into())
}

/// The fixture's own S3 and IAM requests, made with boto3 (AWS's Python
/// SDK, which moto depends on and so installs into the same virtualenv):
/// signed as any S3 client signs, by code that is not the agent's.
/// `python -c CLIENT ENDPOINT KEY_ID SECRET OP ARGS…`; the key is a
/// placeholder for the first, unauthenticated requests (`setup`).
const CLIENT: &str = r#"
import json, os, sys
import boto3
from botocore.config import Config

endpoint, key_id, secret, op, *args = sys.argv[1:]

def client(service, region="us-east-1"):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )

if op == "setup":
    iam = client("iam")
    iam.create_user(UserName="ferry")
    key = iam.create_access_key(UserName="ferry")["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="ferry", PolicyName="all", PolicyDocument=json.dumps(policy))
    print(key["AccessKeyId"])
    print(key["SecretAccessKey"])
elif op in ("upload", "upload-public"):
    bucket, region, root = args
    # public-read: readable without a signature, as a plain HTTP cache.
    acl = {"ACL": "public-read"} if op == "upload-public" else {}
    s3 = client("s3", region)
    try:
        if region == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    except s3.exceptions.ClientError as e:
        if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            with open(path, "rb") as body:
                s3.put_object(Bucket=bucket, Key=os.path.relpath(path, root), Body=body.read(), **acl)
elif op == "delete":
    bucket, key = args
    client("s3").delete_object(Bucket=bucket, Key=key)
else:
    sys.exit(f"unknown operation {op}")
"#;

/// Runs one operation of [`CLIENT`] against `endpoint` signed with `key`:
/// its stdout, or what it said on stderr.
fn boto3(endpoint: &str, key: &AccessKey, op: &[&str]) -> Result<String, String> {
    let out = Command::new(venv().join("bin/python"))
        .args(["-c", CLIENT])
        .args([endpoint, &key.access_key_id, &key.secret_access_key])
        .args(op)
        // No AWS configuration of this machine's user.
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .expect("the virtualenv's python runs (scripts/install-deps)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8(out.stdout).unwrap())
}

/// An access key moto made for the fixture's IAM user.
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// moto's S3 server on a loopback port; killed on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub port: u16,
    /// The key every request must be signed with (S3 allows it everything).
    pub key: AccessKey,
}

impl Moto {
    /// moto with authentication on: every request after the setup must be
    /// signed with [`Moto::key`].
    pub fn start() -> Self {
        Self::launch(true)
    }

    /// moto with authentication off: it reads signed and unsigned requests
    /// alike, so one bucket can be read with SigV4 and as a plain HTTP
    /// binary cache (`<endpoint>/<bucket>`), as Nix without S3 support
    /// reads it. For the benchmarks' same-server baseline.
    pub fn start_without_auth() -> Self {
        Self::launch(false)
    }

    fn launch(auth: bool) -> Self {
        let server = venv().join("bin/moto_server");
        assert!(
            server.exists(),
            "{} is missing: run scripts/install-deps (it installs moto's S3 server from PyPI)",
            server.display()
        );
        // A port picked free can be taken by another test's listener before
        // moto binds it (moto then exits, and the setup meets a stranger or
        // nobody): a start whose setup fails with moto gone is tried again
        // on another port.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = free_port();
            let mut command = Command::new(&server);
            command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            if auth {
                // The IAM user, its key and its policy are made
                // unauthenticated; everything after must be signed.
                command.env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
            }
            let child = command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut moto = Self {
                child,
                port,
                key: AccessKey {
                    access_key_id: "AKIDEXAMPLE".into(),
                    secret_access_key: "unauthenticated".into(),
                },
            };
            wait_for_port(port).expect("moto's S3 server listens");
            if !auth {
                return moto;
            }
            let made = match moto.try_client(&["setup"]) {
                Ok(made) => made,
                Err(_) if attempts < 3 && moto.child.try_wait().ok().flatten().is_some() => continue,
                Err(e) => panic!("boto3 setup against moto failed: {e}"),
            };
            let mut lines = made.lines();
            let (Some(id), Some(secret)) = (lines.next(), lines.next()) else {
                panic!("moto made no access key: {made}");
            };
            moto.key = AccessKey {
                access_key_id: id.to_owned(),
                secret_access_key: secret.to_owned(),
            };
            return moto;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs one operation of [`CLIENT`] with the current key; its stdout,
    /// or a panic with what it said.
    fn client(&self, op: &[&str]) -> String {
        self.try_client(op)
            .unwrap_or_else(|e| panic!("boto3 {op:?} against moto failed: {e}"))
    }

    /// [`Self::client`], with what it said as the error.
    fn try_client(&self, op: &[&str]) -> Result<String, String> {
        boto3(&self.endpoint(), &self.key, op)
    }

    /// Creates `bucket` in `region` and uploads the binary cache in `dir`
    /// into it, object by object, with signed PUTs.
    pub fn upload_cache(&self, bucket: &str, region: &str, dir: &Path) {
        self.client(&["upload", bucket, region, dir.to_str().unwrap()]);
    }

    /// [`Moto::upload_cache`] with every object public-read: readable by
    /// unsigned GETs too, as a plain HTTP binary cache at
    /// `<endpoint>/<bucket>` (with [`Moto::start_without_auth`]).
    pub fn upload_public_cache(&self, bucket: &str, region: &str, dir: &Path) {
        self.client(&["upload-public", bucket, region, dir.to_str().unwrap()]);
    }

    /// Deletes one object with a signed request.
    pub fn delete(&self, bucket: &str, key: &str) {
        self.client(&["delete", bucket, key]);
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `scripts/install-deps` puts s3rver.
fn s3rver_dir() -> PathBuf {
    std::env::var_os("FERRY_TEST_S3RVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/ferry-test/s3rver".into())
}

/// A second, independent S3 server: s3rver (npm, installed by
/// `scripts/install-deps`), which takes only requests with a well-formed
/// SigV4 header for its one key (`S3RVER`/`S3RVER`) — it does not verify
/// the signature itself — and answers ListObjectsV2 in pages. Its objects live in a directory of its own; it
/// is killed on drop. The fixture's own requests are boto3's, as for moto.
#[derive(Debug)]
pub struct S3rver {
    child: Child,
    pub port: u16,
    pub key: AccessKey,
    _data: tempfile::TempDir,
}

impl S3rver {
    pub fn start() -> Self {
        let server = s3rver_dir().join("node_modules/.bin/s3rver");
        assert!(
            server.exists(),
            "{} is missing: run scripts/install-deps (it installs s3rver from npm)",
            server.display()
        );
        let data = tempfile::tempdir().unwrap();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = free_port();
            let mut child = Command::new(&server)
                .args([
                    "-d",
                    data.path().to_str().unwrap(),
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-s",
                ])
                .args(["--no-vhost-buckets"])
                // s3rver makes ListObjectsV2 continuation tokens with DES,
                // which OpenSSL 3 keeps in its legacy provider.
                .env("NODE_OPTIONS", "--openssl-legacy-provider")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            if wait_for_port(port).is_err() || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                let _ = child.wait();
                assert!(attempts < 3, "s3rver does not listen on 127.0.0.1:{port}");
                continue;
            }
            return Self {
                child,
                port,
                key: AccessKey {
                    access_key_id: "S3RVER".into(),
                    secret_access_key: "S3RVER".into(),
                },
                _data: data,
            };
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket` and uploads the files under `dir` into it, keyed
    /// by their paths below `dir`, with boto3's signed PUTs.
    pub fn upload(&self, bucket: &str, dir: &Path) {
        boto3(
            &self.endpoint(),
            &self.key,
            &["upload", bucket, "us-east-1", dir.to_str().unwrap()],
        )
        .unwrap_or_else(|e| panic!("boto3 upload to s3rver failed: {e}"));
    }
}

impl Drop for S3rver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

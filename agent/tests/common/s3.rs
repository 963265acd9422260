//! A real S3 server on loopback: moto's server mode (PyPI, installed into the
//! project's virtualenv by `scripts/install-deps`), with request
//! authentication on: an IAM user and its access key are made through the
//! IAM API in the first unauthenticated requests moto allows, and every
//! request after that (bucket creation, uploads, the agent's reads) must be
//! signed with that key.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ferry_agent::io::cache::s3::AwsCredentials;
use zeroize::Zeroizing;

use super::git::{free_port, wait_for_port};

/// Where `scripts/install-deps` puts the virtualenv.
fn venv() -> PathBuf {
    std::env::var_os("FERRY_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/ferry-test/venv".into())
}

pub struct Moto {
    child: Child,
    pub port: u16,
    pub key: AwsCredentials,
    client: reqwest::blocking::Client,
}

fn field(xml: &str, name: &str) -> String {
    let open = format!("<{name}>");
    let start = xml.find(&open).unwrap_or_else(|| panic!("no <{name}> in {xml}")) + open.len();
    let len = xml[start..].find(&format!("</{name}>")).unwrap();
    xml[start..start + len].to_owned()
}

impl Moto {
    pub fn start() -> Self {
        let server = venv().join("bin/moto_server");
        assert!(
            server.exists(),
            "{} is missing: run scripts/install-deps (it installs moto's S3 server from PyPI)",
            server.display()
        );
        let port = free_port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // The IAM user, its key and its policy are made unauthenticated;
            // everything after must be signed.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port);
        let client = reqwest::blocking::Client::new();
        let iam = |body: &str| {
            let response = client
                .post(format!("http://127.0.0.1:{port}/"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header(
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
                )
                .body(format!("{body}&Version=2010-05-08"))
                .send()
                .unwrap();
            let status = response.status();
            let text = response.text().unwrap();
            assert!(status.is_success(), "moto IAM {body}: {status} {text}");
            text
        };
        iam("Action=CreateUser&UserName=ferry");
        let created = iam("Action=CreateAccessKey&UserName=ferry");
        let policy =
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        iam(&format!(
            "Action=PutUserPolicy&UserName=ferry&PolicyName=all&PolicyDocument={}",
            ferry_agent::io::cache::s3::uri_encode(policy, true)
        ));
        let key = AwsCredentials {
            access_key_id: field(&created, "AccessKeyId"),
            secret_access_key: Zeroizing::new(field(&created, "SecretAccessKey")),
            session_token: None,
            source: "moto".into(),
        };
        Self {
            child,
            port,
            key,
            client,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A signed request with a body; panics unless S3 says yes.
    fn put(&self, path: &str, body: Vec<u8>, region: &str) {
        let url = reqwest::Url::parse(&format!("{}/{path}", self.endpoint())).unwrap();
        let signed = ferry_agent::io::cache::s3::sign_upload(
            "PUT",
            &url,
            region,
            &self.key,
            chrono::Utc::now(),
            &body,
        );
        let mut request = self.client.put(url.clone()).body(body);
        for (k, v) in signed {
            request = request.header(k, v.as_str());
        }
        let response = request.send().unwrap();
        let status = response.status();
        assert!(
            status.is_success(),
            "PUT {url}: {status} {}",
            response.text().unwrap()
        );
    }

    /// Creates `bucket` in `region` and uploads the binary cache in `dir`
    /// into it, object by object, with signed PUTs.
    pub fn upload_cache(&self, bucket: &str, region: &str, dir: &Path) {
        let config = if region == "us-east-1" {
            Vec::new()
        } else {
            format!(
                "<CreateBucketConfiguration><LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
            )
            .into_bytes()
        };
        self.put(bucket, config, region);
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let key = path.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
                    self.put(
                        &format!("{bucket}/{}", ferry_agent::io::cache::s3::uri_encode(&key, false)),
                        std::fs::read(&path).unwrap(),
                        region,
                    );
                }
            }
        }
    }

    /// Deletes one object with a signed request.
    pub fn delete(&self, bucket: &str, key: &str) {
        let url = reqwest::Url::parse(&format!("{}/{bucket}/{key}", self.endpoint())).unwrap();
        let signed = ferry_agent::io::cache::s3::sign_upload(
            "DELETE",
            &url,
            "us-east-1",
            &self.key,
            chrono::Utc::now(),
            b"",
        );
        let mut request = self.client.delete(url);
        for (k, v) in signed {
            request = request.header(k, v.as_str());
        }
        assert!(request.send().unwrap().status().is_success());
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

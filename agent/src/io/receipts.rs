//! Host receipts, as the agent writes them: the receipt part of the
//! `[report]` section (`receipts = "s3://bucket/prefix?…"`, `host_key`,
//! validated here), and [`ReceiptWriter::put`], which signs one receipt
//! with the host's SSH host key (`ferry_signer::receipt`) and writes it with
//! one signed S3 PUT to `<prefix>/<release>/<host>`, classifying the answer
//! as the forge client does: 401/403/404 are configuration problems, 408,
//! 429, 5xx and a bucket too slow to answer are retried, the rest refused.
//! The host key and the S3 credentials are read from their files for each
//! write and never logged.

use std::path::PathBuf;
use std::time::Duration;

use ferry_signer::forge::without_url;
use ferry_signer::receipt::{load_host_key, Receipt};
use ferry_signer::receipt_bucket::ReceiptBucket;

use crate::config::value::{absolute, Invalid};
use crate::io::body::read_bounded;

/// How long one PUT may take, answer included: a bucket slower than this
/// is retried later.
pub const PUT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how this host writes its receipts.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptsTarget {
    pub bucket: ReceiptBucket,
    /// The URL as configured, for messages (it holds no secret).
    pub url: String,
    /// The SSH host key receipts are signed with.
    pub host_key: PathBuf,
    /// The shared credentials file (`cache.s3_credentials_file`), if named.
    pub credentials_file: Option<PathBuf>,
}

/// Validates the receipt settings of `[report]`: `receipts`, an `s3://`
/// URL with a key prefix, and `host_key`, an absolute path (default
/// `/etc/ssh/ssh_host_ed25519_key`).
pub(crate) fn validate(
    receipts: Option<&str>,
    host_key: Option<PathBuf>,
    credentials_file: Option<PathBuf>,
) -> Result<Option<ReceiptsTarget>, Invalid> {
    let host_key = host_key
        .map(|p| absolute(p, "host_key"))
        .transpose()
        .map_err(|p| Invalid::new("report.host_key", p))?;
    // Without a bucket the host key signs nothing: it is checked, not used.
    let Some(url) = receipts else {
        return Ok(None);
    };
    let bucket = ReceiptBucket::parse(url).map_err(|e| {
        Invalid::new(
            "report.receipts",
            format!("{e} (expected s3://bucket/prefix?region=…&endpoint=…)"),
        )
    })?;
    Ok(Some(ReceiptsTarget {
        bucket,
        url: url.to_owned(),
        host_key: host_key.unwrap_or_else(|| ferry_signer::forge::DEFAULT_HOST_KEY.into()),
        credentials_file,
    }))
}

/// The bucket's answer to one receipt, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Written,
    /// Network trouble, a slow bucket, 5xx: keep it, retry later.
    Retry(String),
    /// Credentials, bucket or host key wrong: keep it, tell the operator.
    Misconfigured(String),
    /// The bucket will never take it: drop it.
    Rejected(String),
}

/// Writes receipts to one bucket.
#[derive(Debug, Clone)]
pub struct ReceiptWriter {
    client: reqwest::Client,
    target: ReceiptsTarget,
    timeout: Duration,
}

impl ReceiptWriter {
    /// A writer whose PUTs may take [`PUT_TIMEOUT`] each.
    pub fn new(target: ReceiptsTarget) -> Self {
        Self::with_timeout(target, PUT_TIMEOUT)
    }

    /// A writer whose PUTs may take `timeout` each, answer included.
    pub fn with_timeout(target: ReceiptsTarget, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the TLS backend initialises");
        Self {
            client,
            target,
            timeout,
        }
    }

    /// Where receipts go, for messages.
    pub fn describe(&self) -> String {
        self.target.bucket.describe()
    }

    /// Signs `receipt` with the host key and writes it. The key and the
    /// credentials are read now, so a rotated one is picked up.
    pub async fn put(&self, receipt: &Receipt) -> Written {
        let key = match load_host_key(&self.target.host_key) {
            Ok(key) => key,
            Err(why) => {
                return Written::Misconfigured(format!(
                    "{why}: set report.host_key to the host's SSH host key"
                ))
            }
        };
        let object = match receipt.sign(&key) {
            Ok(object) => object,
            Err(e) => {
                return Written::Misconfigured(format!(
                    "cannot sign with the host key {}: {e}",
                    self.target.host_key.display()
                ))
            }
        };
        drop(key);
        let env = |k: &str| std::env::var(k).ok();
        let profile = self.target.bucket.bucket.profile.as_deref();
        let credentials = match ferry_signer::s3::find_credentials(
            self.target.credentials_file.as_deref(),
            profile,
            &env,
        ) {
            Ok(c) => c,
            Err(e) => {
                return Written::Misconfigured(format!("no S3 credentials for {}: {e}", self.describe()))
            }
        };
        let url = self.target.bucket.receipt_url(&receipt.release, &receipt.host);
        let Ok(parsed) = reqwest::Url::parse(&url) else {
            return Written::Misconfigured(format!("{url} is not a URL: check report.receipts"));
        };
        let headers = ferry_signer::s3::sign_body(
            "PUT",
            &parsed,
            &self.target.bucket.bucket.region,
            "s3",
            &credentials,
            chrono::Utc::now(),
            &object,
        );
        let mut request = self
            .client
            .put(parsed)
            .header("content-type", "text/plain; charset=utf-8")
            .body(object);
        for (name, value) in headers {
            let Ok(mut value) = reqwest::header::HeaderValue::from_str(&value) else {
                return Written::Misconfigured(format!(
                    "the S3 credentials from {} cannot be sent in a header",
                    credentials.source
                ));
            };
            value.set_sensitive(true);
            request = request.header(name, value);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Written::Retry(format!(
                    "{} did not take the receipt within {}",
                    self.describe(),
                    humantime::format_duration(self.timeout)
                ))
            }
            Err(e) => {
                return Written::Retry(format!("cannot reach {}: {}", self.describe(), without_url(&e)))
            }
        };
        let code = response.status().as_u16();
        if (200..300).contains(&code) {
            return Written::Written;
        }
        let body = read_bounded(response, ferry_signer::s3::MAX_ERROR_BYTES).await;
        let error = ferry_signer::s3::parse_error(&body);
        let words = [error.code, error.message]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        let said = if words.is_empty() {
            format!("HTTP {code}")
        } else {
            format!("HTTP {code} {words}")
        };
        let bucket = self.describe();
        match code {
            401 | 403 => Written::Misconfigured(format!(
                "{bucket} refused the receipt ({said}): check the credentials from {} and that they may write under the prefix",
                credentials.source
            )),
            404 => Written::Misconfigured(format!(
                "{bucket} has no such bucket ({said}): check report.receipts"
            )),
            408 | 429 | 500..=599 => Written::Retry(format!("{bucket} answered {said}")),
            _ => Written::Rejected(format!("{bucket} refused the receipt ({said})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings() {
        assert_eq!(validate(None, None, None), Ok(None));
        let t = validate(
            Some("s3://fleet/receipts?endpoint=http://127.0.0.1:9"),
            None,
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.host_key, PathBuf::from("/etc/ssh/ssh_host_ed25519_key"));
        assert_eq!(t.bucket.prefix, "receipts");
        let e = validate(Some("https://fleet"), None, None).unwrap_err();
        assert_eq!(e.key, "report.receipts");
        assert!(e.problem.contains("s3://bucket/prefix"), "{e:?}");
        let e = validate(Some("s3://fleet"), Some("relative".into()), None).unwrap_err();
        assert_eq!(e.key, "report.host_key");
        assert_eq!(validate(None, Some("/etc/ssh/k".into()), None), Ok(None));
    }
}

//! Reading an HTTP answer's body with a bound: the S3 error documents the
//! cache client reads and the forge's answers that may tell a rate limit
//! are read only so far, whatever the server sends.

/// At most `limit` bytes of `response`'s body (less if it breaks off).
pub async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= limit {
            body.truncate(limit);
            break;
        }
    }
    body
}

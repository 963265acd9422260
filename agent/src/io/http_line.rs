//! The request line of the agent's two small loopback HTTP servers (the
//! relay that hands a verified closure to Nix (`io::cache::relay`), and the
//! metrics endpoint, `metrics`): one reading of `METHOD TARGET HTTP/1.x`
//! for both, so a malformed line is refused the same way by each. Pure, so
//! it is tested and fuzzed without sockets.

/// What a well-formed request line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLine<'a> {
    /// `HEAD` (only the head of the answer) rather than `GET`.
    pub head: bool,
    /// The target without its query string.
    pub path: &'a str,
}

/// Reads `GET /path?query HTTP/1.1`; the HTTP status to answer otherwise:
/// 400 for a line that is not three words ending in `HTTP/1.x`, 405 for a
/// method other than GET and HEAD.
pub fn parse(line: &str) -> Result<RequestLine<'_>, u16> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(400);
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(405),
    };
    let path = target.split('?').next().unwrap_or("");
    Ok(RequestLine { head, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_and_head_are_read_and_the_query_dropped() {
        assert_eq!(
            parse("GET /metrics?x=1 HTTP/1.1"),
            Ok(RequestLine {
                head: false,
                path: "/metrics"
            })
        );
        assert_eq!(
            parse("HEAD /0/nix-cache-info HTTP/1.0"),
            Ok(RequestLine {
                head: true,
                path: "/0/nix-cache-info"
            })
        );
    }

    #[test]
    fn malformed_lines_and_other_methods_are_refused() {
        for (line, status) in [
            ("", 400),
            ("GET /metrics", 400),
            ("GET /metrics HTTP/2", 400),
            ("GET  /metrics HTTP/1.1", 400),
            ("GET /metrics HTTP/1.1 extra", 400),
            ("POST /metrics HTTP/1.1", 405),
            ("get /metrics HTTP/1.1", 405),
        ] {
            assert_eq!(parse(line), Err(status), "{line:?}");
        }
    }
}

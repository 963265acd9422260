//! A recording forge on loopback: accepts HTTP/1.1 POSTs, records method,
//! path, headers and JSON body, and answers with a status code the test sets
//! (201 by default; 500 or 401 to simulate trouble).

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: serde_json::Value,
}

#[derive(Debug)]
pub struct Recorder {
    pub port: u16,
    pub answer: Arc<AtomicU16>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = Arc::new(AtomicU16::new(201));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (a, r) = (answer.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(request) = crate::http::read_request(&stream) else {
                    continue;
                };
                let code = a.load(Ordering::SeqCst);
                if code < 300 {
                    let body = serde_json::from_slice(&request.body).unwrap_or(serde_json::Value::Null);
                    r.lock().unwrap().push(Recorded {
                        method: request.method,
                        path: request.target,
                        headers: request.headers,
                        body,
                    });
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                );
            }
        });
        Self {
            port,
            answer,
            requests,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1", self.port)
    }

    /// Accepted requests so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// (commit, state, description) of every accepted status, in order.
    pub fn statuses(&self) -> Vec<(String, String, String)> {
        self.requests()
            .iter()
            .map(|r| {
                let commit = r.path.rsplit('/').next().unwrap_or("").to_owned();
                (
                    commit,
                    r.body["state"].as_str().unwrap_or("").to_owned(),
                    r.body["description"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

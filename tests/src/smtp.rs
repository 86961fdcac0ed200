//! A real SMTP server on loopback (mailin-embedded) that keeps every message it receives.
#![allow(clippy::expect_used)]

use mailin_embedded::{Handler, Response, Server, SslConfig, response};
use std::io;
use std::net::{IpAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// envelope MAIL FROM (no angle brackets)
    pub from: String,
    /// envelope RCPT TO list (no angle brackets)
    pub recipients: Vec<String>,
    /// raw DATA bytes (headers + body, CRLF line endings, dot-unstuffed, without final ".\r\n")
    pub data: Vec<u8>,
}

impl ReceivedMail {
    pub fn data_str(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The message decoded as a mail client would show it.
    pub fn parsed(&self) -> ParsedMail {
        let message = mail_parser::MessageParser::default()
            .parse(&self.data)
            .expect("a parseable MIME message");
        ParsedMail {
            subject: message.subject().unwrap_or_default().to_owned(),
            text: message
                .body_text(0)
                .map(|t| t.into_owned())
                .unwrap_or_default(),
            html: message
                .body_html(0)
                .map(|t| t.into_owned())
                .unwrap_or_default(),
            list_unsubscribe: message
                .header_raw("List-Unsubscribe")
                .map(|v| v.trim().to_owned()),
        }
    }
}

#[derive(Clone)]
struct CollectHandler {
    store: Arc<Mutex<Vec<ReceivedMail>>>,
    from: String,
    recipients: Vec<String>,
    data: Vec<u8>,
}

impl Handler for CollectHandler {
    // signatures exactly as in mailin 0.6.5 (all methods have defaults returning response::OK)
    fn helo(&mut self, _ip: IpAddr, _domain: &str) -> Response {
        response::OK
    }

    fn mail(&mut self, _ip: IpAddr, _domain: &str, from: &str) -> Response {
        // new transaction (also covers RSET, which does not call the handler)
        self.from = from.to_owned();
        self.recipients.clear();
        self.data.clear();
        response::OK
    }

    /// Recipients starting with `bounce` are refused for good (550), with `tempfail` for now (451).
    fn rcpt(&mut self, to: &str) -> Response {
        if to.starts_with("bounce") {
            return response::NO_MAILBOX;
        }
        if to.starts_with("tempfail") {
            return response::INTERNAL_ERROR;
        }
        self.recipients.push(to.to_owned());
        response::OK
    }

    fn data_start(
        &mut self,
        _domain: &str,
        _from: &str,
        _is8bit: bool,
        _to: &[String],
    ) -> Response {
        // returning a non-error response makes mailin send 354 START_DATA
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    /// Messages to a `slow...` recipient take 5 seconds to accept (a slow or stuck mail server).
    fn data_end(&mut self) -> Response {
        if self.recipients.iter().any(|r| r.starts_with("slow")) {
            thread::sleep(Duration::from_secs(5));
        }
        let mail = ReceivedMail {
            from: std::mem::take(&mut self.from),
            recipients: std::mem::take(&mut self.recipients),
            data: std::mem::take(&mut self.data),
        };
        if let Ok(mut store) = self.store.lock() {
            store.push(mail);
        }
        response::OK
    }
}

#[derive(Debug, Clone)]
pub struct ParsedMail {
    pub subject: String,
    pub text: String,
    pub html: String,
    pub list_unsubscribe: Option<String>,
}

pub struct TestSmtp {
    port: u16,
    messages: Arc<Mutex<Vec<ReceivedMail>>>,
    // Detached: the server loops forever and cannot be stopped; dropping this does not join it.
    _thread: thread::JoinHandle<()>,
}

impl TestSmtp {
    pub fn start() -> TestSmtp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test smtp listener");
        let port = listener.local_addr().expect("local_addr").port();
        let messages: Arc<Mutex<Vec<ReceivedMail>>> = Arc::new(Mutex::new(Vec::new()));

        let handler = CollectHandler {
            store: Arc::clone(&messages),
            from: String::new(),
            recipients: Vec::new(),
            data: Vec::new(),
        };

        let thread = thread::Builder::new()
            .name(format!("test-smtp-{port}"))
            .spawn(move || {
                let mut server = Server::new(handler);
                server
                    .with_name("test.localhost")
                    .with_num_threads(32)
                    .with_tcp_listener(listener);
                // optional: ssl is already None by default; shown for explicitness
                if let Err(e) = server.with_ssl(SslConfig::None) {
                    eprintln!("test smtp: ssl config error: {e}");
                    return;
                }
                // blocks forever; mailin_embedded::err::Error is not Send, so handle it here
                if let Err(e) = server.serve() {
                    eprintln!("test smtp: server error: {e}");
                }
            })
            .expect("spawn test smtp thread");

        // The listener is already bound and listening, so clients may connect immediately
        // (connections queue in the backlog until the server thread calls accept).
        TestSmtp {
            port,
            messages,
            _thread: thread,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Snapshot of all messages received so far.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Poll until at least `n` messages arrived or `timeout` elapsed; returns the snapshot.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = Instant::now() + timeout;
        loop {
            let msgs = self.messages();
            if msgs.len() >= n || Instant::now() >= deadline {
                return msgs;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

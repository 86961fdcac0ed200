//! `GET /api/v1/ws`: a WebSocket per signed-in client that receives the user's real-time events
//! (new notifications, media processing progress). Events travel through Redis pub/sub
//! (`lectern_core::events`), so a user connected to any API process gets them.
//!
//! - Authentication: the access token as `?token=` (browsers cannot set headers on a WebSocket)
//!   or an `Authorization: Bearer` header. A missing, malformed, expired or revoked token gets
//!   the upgrade and then an immediate close with code 4401 and the reason.
//! - At most [`MAX_SOCKETS_PER_USER`] sockets per user in one process; one more is closed with
//!   code 4429.
//! - The server pings every 20 s and closes a socket that has not answered for 60 s.
//! - The first message is `{"type":"ready","unread":n}`; a client that reconnects fetches what it
//!   missed from `GET /api/v1/notifications`.
//! - A session that ends (logout, revocation, password reset or change, account deletion,
//!   suspension) closes its sockets on every process within a moment: core publishes a
//!   `session_ended` message on the events channel ([`accounts::close_sockets`]), and each
//!   process closes the matching sockets it holds with code 4401. The token is checked only at
//!   connect, so without this a socket would outlive its session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, Message};
use lectern_core::Services;
use lectern_core::accounts;
use lectern_core::auth::{AuthUser, Principal};
use lectern_core::events::Envelope;
use tokio::sync::mpsc;
use uuid::Uuid;

pub const MAX_SOCKETS_PER_USER: usize = 5;
const PING_EVERY: Duration = Duration::from_secs(20);
const DEAD_AFTER: Duration = Duration::from_secs(60);

/// What a socket's task is told to do.
enum Outgoing {
    /// Send this event.
    Event(String),
    /// The session ended: say so and close.
    End,
}

/// One open socket: its id, its session, and the channel its task reads from.
struct Socket {
    id: u64,
    session_id: Uuid,
    tx: mpsc::UnboundedSender<Outgoing>,
}

/// The sockets this process holds, by user.
#[derive(Default)]
pub struct Hub {
    sockets: Mutex<HashMap<Uuid, Vec<Socket>>>,
    next_id: AtomicU64,
}

impl Hub {
    /// Hands an event to every socket of its user in this process; a `session_ended` message
    /// closes the sockets of that session (of every session when it names none) instead.
    pub fn deliver(&self, envelope: Envelope) {
        let Ok(mut sockets) = self.sockets.lock() else {
            return;
        };
        let Some(list) = sockets.get_mut(&envelope.user_id) else {
            return;
        };
        if envelope.event["type"] == accounts::SESSION_ENDED {
            let session = envelope.event["session_id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok());
            list.retain(|s| {
                let ended = session.is_none_or(|id| id == s.session_id);
                if ended {
                    let _ = s.tx.send(Outgoing::End);
                }
                !ended
            });
        } else {
            let text = envelope.event.to_string();
            list.retain(|s| s.tx.send(Outgoing::Event(text.clone())).is_ok());
        }
    }

    fn register(&self, user: &AuthUser) -> Option<(u64, mpsc::UnboundedReceiver<Outgoing>)> {
        let mut sockets = self.sockets.lock().ok()?;
        let list = sockets.entry(user.id).or_default();
        list.retain(|s| !s.tx.is_closed());
        if list.len() >= MAX_SOCKETS_PER_USER {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        list.push(Socket {
            id,
            session_id: user.session_id,
            tx,
        });
        Some((id, rx))
    }

    fn unregister(&self, user: Uuid, id: u64) {
        if let Ok(mut sockets) = self.sockets.lock()
            && let Some(list) = sockets.get_mut(&user)
        {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                sockets.remove(&user);
            }
        }
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct WsParams {
    pub token: Option<String>,
}

fn close_with(mut session: actix_ws::Session, code: u16, reason: &str) {
    let reason = CloseReason {
        code: CloseCode::Other(code),
        description: Some(reason.to_owned()),
    };
    actix_web::rt::spawn(async move {
        let _ = session
            .text(serde_json::json!({"type": "error", "reason": reason.description}).to_string())
            .await;
        let _ = session.close(Some(reason)).await;
    });
}

/// Real-time events for the signed-in caller, over a WebSocket (RFC 6455).
///
/// Authenticate with the access token as `?token=` (browsers cannot set headers on a WebSocket)
/// or with an `Authorization: Bearer` header. A missing, wrong, expired or revoked token is not
/// refused at the handshake (a browser cannot read a refused handshake's status): the socket
/// opens, receives `{"type": "error", "reason": "..."}` and is closed with code 4401.
///
/// Events, one JSON text message each:
/// - `{"type": "ready", "unread": n}` first, with the unread notification count (a client that
///   reconnects fetches what it missed from `GET /api/v1/notifications`);
/// - `{"type": "notification", "notification": {id, type, title, message, data, read,
///   created_at}}`: a new notification, as `GET /notifications` lists it;
/// - `{"type": "media.progress", "media_id", "job_id", "progress"}` (percent, 0 to 99),
///   `{"type": "media.ready", "media_id"}` and `{"type": "media.failed", "media_id", "error"}`:
///   processing of the caller's uploads;
/// - `{"type": "error", "reason": "..."}` just before the server closes the socket.
///
/// Close codes:
/// - 4401: no valid token at connect, or the session ended (logout, revocation, password reset
///   or change, account deletion, suspension): sign in again;
/// - 4429: more than 5 open sockets for the user on one API process;
/// - 1000/1006: normal closure; the server pings every 20 s and drops a socket silent for 60 s.
#[utoipa::path(
    get,
    path = "/api/v1/ws",
    tag = "notifications",
    operation_id = "websocket",
    params(
        ("token" = Option<String>, Query, description = "the access token (or send `Authorization: Bearer`)")
    ),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open; events and close codes are above"),
        (status = 400, body = crate::error::ErrorBody, description = "malformed_request: not a WebSocket handshake (`Upgrade: websocket`, `Sec-WebSocket-Key`...)")
    )
)]
pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    services: web::Data<Services>,
    hub: web::Data<Hub>,
    params: web::Query<WsParams>,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, session, mut stream) = actix_ws::handle(&req, body).map_err(|e| {
        crate::error::ApiError::Malformed(format!("not a WebSocket handshake: {e}"))
    })?;
    let token = params.token.clone().or_else(|| {
        req.headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
    });
    let user = match token {
        None => Err("an access token is required (?token=)".to_owned()),
        Some(t) => lectern_core::accounts::authenticate(&services, &t)
            .await
            .map_err(|e| e.to_string()),
    };
    let user = match user {
        Ok(u) => u,
        Err(reason) => {
            close_with(session, 4401, &reason);
            return Ok(response);
        }
    };
    let Some((socket_id, mut events)) = hub.register(&user) else {
        close_with(
            session,
            4429,
            &format!("at most {MAX_SOCKETS_PER_USER} open connections per user"),
        );
        return Ok(response);
    };
    let unread =
        lectern_core::notifications::unread_count(&services, &Principal::User(user.clone()))
            .await
            .unwrap_or(0);
    let hub = hub.into_inner();
    let mut session = session;
    actix_web::rt::spawn(async move {
        let ready = serde_json::json!({"type": "ready", "unread": unread}).to_string();
        let mut alive = session.text(ready).await.is_ok();
        let mut last_heard = Instant::now();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        while alive {
            tokio::select! {
                event = events.recv() => match event {
                    Some(Outgoing::Event(text)) => alive = session.text(text).await.is_ok(),
                    Some(Outgoing::End) => {
                        hub.unregister(user.id, socket_id);
                        close_with(session, 4401, "the session has ended; sign in again");
                        return;
                    }
                    None => alive = false,
                },
                msg = stream.recv() => match msg {
                    Some(Ok(Message::Ping(bytes))) => {
                        last_heard = Instant::now();
                        alive = session.pong(&bytes).await.is_ok();
                    }
                    Some(Ok(Message::Pong(_) | Message::Text(_) | Message::Binary(_))) => last_heard = Instant::now(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => alive = false,
                    Some(Ok(_)) => {}
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > DEAD_AFTER {
                        alive = false;
                    } else {
                        alive = session.ping(b"").await.is_ok();
                    }
                }
            }
        }
        hub.unregister(user.id, socket_id);
        let _ = session.close(None).await;
    });
    Ok(response)
}

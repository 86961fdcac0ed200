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

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, Message};
use lectern_core::Services;
use lectern_core::auth::Principal;
use lectern_core::events::Envelope;
use tokio::sync::mpsc;
use uuid::Uuid;

pub const MAX_SOCKETS_PER_USER: usize = 5;
const PING_EVERY: Duration = Duration::from_secs(20);
const DEAD_AFTER: Duration = Duration::from_secs(60);

/// One open socket: its id and the channel its task reads events from.
type Socket = (u64, mpsc::UnboundedSender<String>);

/// The sockets this process holds, by user.
#[derive(Default)]
pub struct Hub {
    sockets: Mutex<HashMap<Uuid, Vec<Socket>>>,
    next_id: AtomicU64,
}

impl Hub {
    /// Hands an event to every socket of its user in this process.
    pub fn deliver(&self, envelope: Envelope) {
        let text = envelope.event.to_string();
        if let Ok(mut sockets) = self.sockets.lock()
            && let Some(list) = sockets.get_mut(&envelope.user_id)
        {
            list.retain(|(_, tx)| tx.send(text.clone()).is_ok());
        }
    }

    fn register(&self, user: Uuid) -> Option<(u64, mpsc::UnboundedReceiver<String>)> {
        let mut sockets = self.sockets.lock().ok()?;
        let list = sockets.entry(user).or_default();
        list.retain(|(_, tx)| !tx.is_closed());
        if list.len() >= MAX_SOCKETS_PER_USER {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        list.push((id, tx));
        Some((id, rx))
    }

    fn unregister(&self, user: Uuid, id: u64) {
        if let Ok(mut sockets) = self.sockets.lock()
            && let Some(list) = sockets.get_mut(&user)
        {
            list.retain(|(i, _)| *i != id);
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

pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    services: web::Data<Services>,
    hub: web::Data<Hub>,
    params: web::Query<WsParams>,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, session, mut stream) = actix_ws::handle(&req, body)?;
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
    let Some((socket_id, mut events)) = hub.register(user.id) else {
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
                    Some(text) => alive = session.text(text).await.is_ok(),
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

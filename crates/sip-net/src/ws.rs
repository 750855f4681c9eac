//! SIP over WebSocket (RFC 7118): the client must offer the `sip` subprotocol and gets it
//! echoed; each WebSocket message carries exactly one SIP message.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, info};

use switchyard_sip::inspect::{Capabilities, inspect_datagram};

use crate::limits::Permit;
use crate::stream::{StreamCtx, deliver};

fn offers_sip(req: &Request) -> bool {
    req.headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("sip"))
}

// The handshake callback's signature is tungstenite's; its error type is large by design.
#[allow(clippy::result_large_err)]
fn check_subprotocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    if !offers_sip(req) {
        let mut err = ErrorResponse::new(Some("the sip subprotocol is required (RFC 7118)".into()));
        *err.status_mut() = StatusCode::BAD_REQUEST;
        return Err(err);
    }
    resp.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("sip"));
    Ok(resp)
}

pub(crate) async fn run_ws<S>(io: S, mut ctx: StreamCtx, _permit: Permit)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(ctx.limits.max_message))
        .max_frame_size(Some(ctx.limits.max_message));
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(io, check_subprotocol, Some(config));
    let ws = match tokio::time::timeout(ctx.limits.message_timeout, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(source = %ctx.source, error = %e, "websocket handshake failed");
            return;
        }
        Err(_) => {
            debug!(source = %ctx.source, "websocket handshake timed out");
            return;
        }
    };
    let (mut sink, mut stream) = ws.split();
    let (flow, mut out) = ctx.hub.open_flow(ctx.transport, ctx.source);
    let writer = tokio::spawn(async move {
        while let Some(data) = out.recv().await {
            let msg = match std::str::from_utf8(&data) {
                Ok(text) => WsMessage::Text(text.into()),
                Err(_) => WsMessage::Binary(data),
            };
            if sink.send(msg).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let why = loop {
        let next = tokio::select! {
            r = tokio::time::timeout(ctx.limits.idle_timeout, stream.next()) => r,
            _ = ctx.shutdown.changed() => break "shutdown",
        };
        let data: Bytes = match next {
            Err(_) => break "idle timeout",
            Ok(None) => break "closed by peer",
            Ok(Some(Err(_))) => break "websocket error",
            Ok(Some(Ok(WsMessage::Text(t)))) => Bytes::copy_from_slice(t.as_bytes()),
            Ok(Some(Ok(WsMessage::Binary(b)))) => b,
            Ok(Some(Ok(WsMessage::Close(_)))) => break "closed by peer",
            Ok(Some(Ok(_))) => continue,
        };
        let inbound = inspect_datagram(data, &Capabilities::SWITCHYARD);
        if matches!(inbound, switchyard_sip::inspect::Inbound::KeepAlive) {
            continue;
        }
        if let Err(why) = deliver(&ctx, flow, inbound).await {
            break why;
        }
    };
    info!(?flow, source = %ctx.source, transport = %ctx.transport, reason = why, "websocket closed");
    ctx.hub.close_flow(flow);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer).await;
}

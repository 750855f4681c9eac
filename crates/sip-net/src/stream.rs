//! Byte-stream connections (TCP and TLS): framing by Content-Length, CRLF keep-alives,
//! idle and per-message timeouts, bounded buffers.

use std::net::SocketAddr;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info};

use switchyard_sip::build::ResponseBuilder;
use switchyard_sip::framing::{Frame, StreamFramer};
use switchyard_sip::inspect::{Capabilities, Inbound, inspect_message, reject_unparsed};

use crate::hub::Hub;
use crate::limits::{LimitsConfig, Permit};
use crate::transport::{FlowId, Incoming, Target, Transport};

pub(crate) struct StreamCtx {
    pub hub: Hub,
    pub tx: mpsc::Sender<Incoming>,
    pub limits: LimitsConfig,
    pub transport: Transport,
    pub source: SocketAddr,
    pub local: SocketAddr,
    pub shutdown: watch::Receiver<bool>,
}

pub(crate) async fn run_stream<S>(io: S, mut ctx: StreamCtx, _permit: Permit)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (flow, mut out) = ctx.hub.open_flow(ctx.transport, ctx.source);
    debug!(?flow, transport = %ctx.transport, source = %ctx.source, "connection open");
    let writer = tokio::spawn(async move {
        while let Some(data) = out.recv().await {
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });

    let mut framer = StreamFramer::new(ctx.limits.max_message);
    let mut buf = vec![0u8; 8192];
    let mut message_started: Option<Instant> = None;
    let why = loop {
        let idle_deadline = Instant::now() + ctx.limits.idle_timeout;
        let deadline = match message_started {
            Some(t) => (t + ctx.limits.message_timeout).min(idle_deadline),
            None => idle_deadline,
        };
        let n = tokio::select! {
            r = timeout_at(deadline, rd.read(&mut buf)) => match r {
                Err(_) if message_started.is_some() => break "message not completed in time",
                Err(_) => break "idle timeout",
                Ok(Ok(0)) => break "closed by peer",
                Ok(Ok(n)) => n,
                Ok(Err(_)) => break "read error",
            },
            _ = ctx.shutdown.changed() => break "shutdown",
        };
        framer.push(&buf[..n]);
        match drain_frames(&mut framer, &ctx, flow).await {
            Ok(()) => {}
            Err(why) => break why,
        }
        message_started = match (framer.buffered(), message_started) {
            (0, _) => None,
            (_, Some(t)) => Some(t),
            (_, None) => Some(Instant::now()),
        };
    };
    info!(?flow, source = %ctx.source, transport = %ctx.transport, reason = why, "connection closed");
    ctx.hub.close_flow(flow);
    // The writer ends once the hub's sender is gone; let it flush what was queued.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer).await;
}

async fn drain_frames(
    framer: &mut StreamFramer,
    ctx: &StreamCtx,
    flow: FlowId,
) -> Result<(), &'static str> {
    loop {
        match framer.next_frame() {
            Ok(None) => return Ok(()),
            Ok(Some(Frame::Ping)) => {
                let _ = ctx
                    .hub
                    .send(Target::Flow(flow), Bytes::from_static(b"\r\n"))
                    .await;
            }
            Ok(Some(Frame::Pong)) => {}
            Ok(Some(Frame::Message(msg))) => {
                let inbound = inspect_message(msg, &Capabilities::SWITCHYARD);
                deliver(ctx, flow, inbound).await?;
            }
            Err(e) => {
                // The stream cannot be resynchronised: answer if possible, then close.
                let head = framer.head_bytes();
                if let Inbound::Reject { rejection, rows } = reject_unparsed(head, &e) {
                    let bytes =
                        ResponseBuilder::from_rows(rejection.status, &rejection.reason, rows, "")
                            .build();
                    let _ = ctx.hub.send(Target::Flow(flow), bytes).await;
                }
                debug!(source = %ctx.source, error = %e, "stream framing error");
                return Err("framing error");
            }
        }
    }
}

pub(crate) async fn deliver(
    ctx: &StreamCtx,
    flow: FlowId,
    inbound: Inbound,
) -> Result<(), &'static str> {
    let incoming = Incoming {
        inbound,
        transport: ctx.transport,
        source: ctx.source,
        local: ctx.local,
        flow: Some(flow),
        received: std::time::Instant::now(),
    };
    ctx.tx.send(incoming).await.map_err(|_| "dispatcher gone")
}

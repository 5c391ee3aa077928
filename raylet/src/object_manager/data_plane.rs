//! The object data plane: byte ranges of objects between raylets over plain TCP (the wire
//! is described at `ObjectTransferRequest` in `raylet.proto`), from the source's segment
//! to the socket and from the socket into the puller's segment, with no copy in between.
//!
//! It shares the raylet's port with gRPC: the raylet's listener hands a connection whose
//! first byte is [`MAGIC`]'s to [`ObjectManager::serve_connection`] and every other one to
//! tonic (an HTTP/2 client's first byte is `P`, of its preface; a TLS client's is 0x16).
//!
//! Invariants:
//! - Nothing about an object is served before the request's token is checked; a wrong
//!   token gets `Unauthenticated` and the connection closes.
//! - With TLS on, only the magic travels in the clear; both sides then present
//!   certificates from the cluster's CA, as on gRPC.
//! - A puller writes into its segment only the bytes of its own range, and reports them
//!   written ([`Progress::advance`]) only once a whole piece has arrived, after its
//!   writable view is dropped; so a node serving an object it is still receiving never
//!   reads bytes that are being written.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use miniray_common::auth::token_matches;
use miniray_common::config::TRANSFER_CHUNK_SIZE;
use miniray_common::{ErrorCode, ObjectId};
use miniray_proto::{ObjectTransferHeader, ObjectTransferRequest, ReadObjectRequest};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::progress::Progress;
use super::{ObjectManager, PullError};

/// The first bytes of a data-plane connection.
pub const MAGIC: [u8; 8] = *b"MRXFER1\n";

/// Largest request or header accepted (they name an object, a range and a few nodes).
const MAX_FRAME: usize = 64 << 10;

/// How long connecting, the magic, the TLS handshake, the request and the header may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a transfer may go without moving a piece before it is given up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes a puller receives between reports of progress, and a source sends per view.
const PIECE: usize = TRANSFER_CHUNK_SIZE;

/// Whether a connection whose first byte is `first` is the data plane's.
pub fn is_data_plane(first: u8) -> bool {
    first == MAGIC[0]
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A data-plane connection, plain or TLS.
type Conn = Box<dyn Stream>;

/// This process's TLS for the data plane (`None`: plaintext), built once.
fn tls() -> Result<Option<&'static PeerTls>, PullError> {
    static TLS: OnceLock<Result<Option<PeerTls>, String>> = OnceLock::new();
    let built = TLS.get_or_init(|| {
        let Some(tls) = miniray_common::tls::current() else {
            return Ok(None);
        };
        Ok(Some(PeerTls {
            acceptor: tls.stream_acceptor().map_err(|e| e.to_string())?,
            connector: tls.stream_connector().map_err(|e| e.to_string())?,
        }))
    });
    built.as_ref().map(Option::as_ref).map_err(|e| {
        PullError::new(
            ErrorCode::Internal,
            format!("the data plane's TLS setting: {e}"),
        )
    })
}

struct PeerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

/// A range of an object on a peer, requested: the peer's answer, and the connection its
/// bytes come on.
pub struct OpenRange {
    pub header: ObjectTransferHeader,
    conn: Conn,
}

/// Asks the raylet at `address` (host and port) for a range of an object. An answer other
/// than OK is the error it names (`NotFound`: the object is not there); a peer that cannot
/// be reached, or answers out of protocol, is `Unavailable`.
pub async fn open_range(
    address: &str,
    token: &str,
    read: ReadObjectRequest,
) -> Result<OpenRange, PullError> {
    let what = format!(
        "reading {} bytes at {} of object {} from {address}",
        read.length,
        read.offset,
        hex::encode(&read.object_id)
    );
    let tls = tls()?;
    let opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut tcp = TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        tcp.write_all(&MAGIC).await?;
        let mut conn: Conn = match tls {
            Some(t) => Box::new(
                t.connector
                    .connect(miniray_common::tls::server_name(), tcp)
                    .await?,
            ),
            None => Box::new(tcp),
        };
        let request = ObjectTransferRequest {
            token: token.to_owned(),
            read: Some(read),
        };
        write_frame(&mut conn, &request).await?;
        let header: ObjectTransferHeader = read_frame(&mut conn).await?;
        Ok::<_, std::io::Error>((conn, header))
    })
    .await;
    let (conn, header) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return Err(unavailable(&what, &e.to_string())),
        Err(_) => {
            return Err(unavailable(
                &what,
                &format!("no answer within {HANDSHAKE_TIMEOUT:?}"),
            ));
        }
    };
    if !header.error.is_empty() {
        let code = match ErrorCode::parse(&header.error) {
            // What the peer says of the request itself stands; anything else is the
            // peer failing.
            Some(
                code @ (ErrorCode::NotFound
                | ErrorCode::Unauthenticated
                | ErrorCode::InvalidArgument),
            ) => code,
            _ => ErrorCode::Unavailable,
        };
        return Err(PullError::new(
            code,
            format!("{what}: refused: {}", header.message),
        ));
    }
    Ok(OpenRange { header, conn })
}

impl OpenRange {
    /// Checks that the peer is about to send the bytes `[start, end)` of an object of
    /// `total` bytes.
    pub(crate) fn expect(
        &self,
        id: ObjectId,
        total: u64,
        start: u64,
        end: u64,
    ) -> Result<(), PullError> {
        let h = &self.header;
        if h.total_size != total || h.offset != start || h.offset.saturating_add(h.length) != end {
            return Err(PullError::new(
                ErrorCode::Unavailable,
                format!(
                    "pulling object {id}: the peer offers bytes [{}, +{}) of {}, expected [{start}, {end}) of {total}",
                    h.offset, h.length, h.total_size
                ),
            ));
        }
        Ok(())
    }
}

fn unavailable(what: &str, why: &str) -> PullError {
    PullError::new(ErrorCode::Unavailable, format!("{what}: {why}"))
}

impl ObjectManager {
    /// Receives the bytes `[*at, end)` of `id` from `range` (which [`OpenRange::expect`]
    /// checked) straight into the unsealed local copy, piece by piece; `*at` and
    /// `progress` follow what has been written, also on failure.
    pub(super) async fn receive(
        &self,
        id: ObjectId,
        range: &mut OpenRange,
        end: u64,
        at: &mut u64,
        progress: &Progress,
    ) -> Result<(), PullError> {
        while *at < end {
            let len = (end - *at).min(PIECE as u64);
            // SAFETY: this pull created `id` unsealed and is the only writer of its bytes;
            // its ranges do not overlap, and nobody reads `[at, at + len)` before
            // `progress` says it is written, which is after this view is dropped.
            let mut view = unsafe { self.store.unsealed_view_mut(id, *at, len as usize) }
                .map_err(|e| PullError::new(e.code(), e.to_string()))?;
            let read =
                tokio::time::timeout(STALL_TIMEOUT, range.conn.read_exact(view.as_mut())).await;
            drop(view);
            let what = || format!("pulling object {id}, bytes at {at}");
            match read {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(unavailable(&what(), &e.to_string())),
                Err(_) => {
                    return Err(unavailable(
                        &what(),
                        &format!("no bytes for {STALL_TIMEOUT:?}"),
                    ));
                }
            }
            self.bytes_pulled
                .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
            *at += len;
            progress.advance(*at);
        }
        Ok(())
    }

    /// Serves one data-plane connection (its first byte was [`MAGIC`]'s): one range of
    /// one object, then closes it.
    pub async fn serve_connection(self: Arc<Self>, conn: TcpStream) {
        let peer = conn.peer_addr().ok();
        if let Err(e) = self.serve(conn).await {
            tracing::debug!(?peer, error = %e, "a data-plane connection ended early");
        }
    }

    async fn serve(&self, mut tcp: TcpStream) -> Result<(), PullError> {
        let tls = tls()?;
        let opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut magic = [0u8; MAGIC.len()];
            tcp.read_exact(&mut magic).await?;
            if magic != MAGIC {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not the data plane's magic",
                ));
            }
            let mut conn: Conn = match tls {
                Some(t) => Box::new(t.acceptor.accept(tcp).await?),
                None => Box::new(tcp),
            };
            let request: ObjectTransferRequest = read_frame(&mut conn).await?;
            Ok((conn, request))
        })
        .await;
        let (mut conn, request) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => return Err(unavailable("a data-plane request", &e.to_string())),
            Err(_) => return Err(unavailable("a data-plane request", "timed out")),
        };
        let refuse = |code: ErrorCode, message: String| ObjectTransferHeader {
            error: code.as_str().into(),
            message,
            ..Default::default()
        };
        let served = match (
            token_matches(self.token.as_bytes(), request.token.as_bytes()),
            request.read,
        ) {
            (false, _) => Err(refuse(
                ErrorCode::Unauthenticated,
                "the cluster token is missing or wrong".into(),
            )),
            (true, None) => Err(refuse(ErrorCode::InvalidArgument, "no range asked".into())),
            (true, Some(read)) => match ObjectId::from_bytes(&read.object_id) {
                Err(e) => Err(refuse(ErrorCode::InvalidArgument, e.to_string())),
                Ok(id) => self
                    .serve_range(id, PIECE as u64, read.offset, read.length, read.puller)
                    .map_err(|e| refuse(e.code, e.message)),
            },
        };
        let io = |e: std::io::Error| unavailable("serving a range", &e.to_string());
        let (mut range, peers) = match served {
            Ok(served) => served,
            Err(refusal) => {
                write_frame(&mut conn, &refusal).await.map_err(io)?;
                return conn.shutdown().await.map_err(io);
            }
        };
        let header = ObjectTransferHeader {
            error: String::new(),
            message: String::new(),
            total_size: range.total,
            offset: range.at,
            length: range.end - range.at,
            peers,
        };
        write_frame(&mut conn, &header).await.map_err(io)?;
        while let Some(next) = range.next().await {
            // A failure closes the connection short: the puller reads the rest elsewhere.
            let (_, view) = next?;
            match tokio::time::timeout(STALL_TIMEOUT, conn.write_all(view.as_ref())).await {
                Ok(written) => written.map_err(io)?,
                Err(_) => {
                    return Err(unavailable(
                        "serving a range",
                        &format!("the puller took nothing for {STALL_TIMEOUT:?}"),
                    ));
                }
            }
        }
        conn.shutdown().await.map_err(io)
    }
}

async fn write_frame(conn: &mut Conn, msg: &impl Message) -> std::io::Result<()> {
    let body = msg.encode_to_vec();
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME)
        .ok_or_else(|| std::io::Error::other(format!("a frame of {} bytes", body.len())))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    conn.write_all(&frame).await?;
    conn.flush().await
}

async fn read_frame<M: Message + Default>(conn: &mut Conn) -> std::io::Result<M> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {MAX_FRAME})"),
        ));
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).await?;
    M::decode(body.as_slice())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

//! HTTP/2 floods from a raw client, frame by frame: rapid reset (CVE-2023-44487), a CONTINUATION
//! flood, and PING and SETTINGS floods. The gateway stays up, its memory stays bounded, the
//! flooding connection is cut where the protocol lets the server tell abuse from use, and a normal
//! client is served throughout.

use samblik_proto::v1::Purpose;
use samblik_synth::Department;
use samblik_tests::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const NO_GOAWAY: u32 = u32::MAX;
/// RFC 9113's ENHANCE_YOUR_CALM: the peer is generating excessive load.
const ENHANCE_YOUR_CALM: u32 = 0xb;
const PROTOCOL_ERROR: u32 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A literal header field without indexing, new name (RFC 7541 6.2.2), no Huffman coding.
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00, u8::try_from(name.len()).unwrap()];
    b.extend_from_slice(name.as_bytes());
    b.push(u8::try_from(value.len()).unwrap());
    b.extend_from_slice(value.as_bytes());
    b
}

/// The header block of a gRPC lookup (its body never follows).
fn lookup_headers(addr: SocketAddr) -> Vec<u8> {
    // :method POST and :scheme http from the static table (indexes 3 and 6).
    let mut block = vec![0x83, 0x86];
    block.extend(literal(":path", "/samblik.v1.LookupService/Lookup"));
    block.extend(literal(":authority", &addr.to_string()));
    block.extend(literal("content-type", "application/grpc"));
    block.extend(literal("te", "trailers"));
    block
}

/// A raw HTTP/2 connection (prior knowledge, no TLS): the preface and an empty SETTINGS sent,
/// and a task reading whatever the server says, noting a GOAWAY and the end of the connection.
struct Raw {
    write: tokio::net::tcp::OwnedWriteHalf,
    /// The error code of the server's GOAWAY, [`NO_GOAWAY`] before one.
    goaway: Arc<AtomicU32>,
    closed: tokio::task::JoinHandle<()>,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Raw {
        let (mut read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
        write.write_all(PREFACE).await.unwrap();
        write.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        let goaway = Arc::new(AtomicU32::new(NO_GOAWAY));
        let seen = Arc::clone(&goaway);
        let closed = tokio::spawn(async move {
            let mut header = [0u8; 9];
            loop {
                if read.read_exact(&mut header).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                let mut payload = vec![0u8; len];
                if read.read_exact(&mut payload).await.is_err() {
                    return;
                }
                if header[3] == GOAWAY && len >= 8 {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    seen.store(code, Ordering::SeqCst);
                }
            }
        });
        Raw {
            write,
            goaway,
            closed,
        }
    }

    /// Sends `frames`, as far as the server still reads them; whether it read them all.
    async fn send(&mut self, frames: &[u8]) -> bool {
        self.write.write_all(frames).await.is_ok()
    }

    /// Waits until the server has ended the connection; the error code of its GOAWAY.
    async fn cut_off(self) -> u32 {
        tokio::time::timeout(Duration::from_secs(10), self.closed)
            .await
            .expect("the server ends the flooding connection")
            .unwrap();
        let code = self.goaway.load(Ordering::SeqCst);
        assert_ne!(code, NO_GOAWAY, "with a GOAWAY first");
        code
    }
}

/// The process's resident memory (the gateway runs in this process), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A gateway over the jobcenter's reference source, in process.
async fn gateway() -> RunningGateway {
    TestGateway::in_process(vec![(reference(Department::Jobcenter), "Jobcenter")])
        .start()
        .await
}

/// A normal caller on a connection of its own is answered.
async fn served(gateway: &RunningGateway) {
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        gateway.client().await.lookup(request(
            all_department_citizen(),
            Purpose::PrepareMeeting,
            Some(&token(Department::Jobcenter)),
            None,
        )),
    )
    .await
    .expect("a normal caller is answered during the flood");
    answer.unwrap();
}

/// Prints how the process's memory moved across a flood. Not asserted here: the other tests
/// of this binary run in the same process at the same time, so its memory is theirs too; run
/// `cargo test -p samblik-tests --test e2e floods -- --test-threads 1 --nocapture` to read it.
fn report(flood: &str, before_kib: u64) {
    let after = rss_kib();
    eprintln!(
        "{flood}: resident memory {} MiB before, {} MiB after",
        before_kib / 1024,
        after / 1024
    );
}

#[tokio::test]
async fn rapid_reset_is_cut_off_and_others_are_served() {
    let gateway = gateway().await;
    served(&gateway).await;
    let before = rss_kib();
    let mut raw = Raw::open(gateway.addr).await;
    let headers = lookup_headers(gateway.addr);
    let mut burst = Vec::new();
    for i in 0..10_000u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS, stream, &headers));
        // CANCEL (0x8): opened and reset at once, as CVE-2023-44487 does.
        burst.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    raw.send(&burst).await;
    served(&gateway).await;
    assert_eq!(raw.cut_off().await, ENHANCE_YOUR_CALM);
    served(&gateway).await;
    report("rapid reset", before);
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off_and_others_are_served() {
    let gateway = gateway().await;
    served(&gateway).await;
    let before = rss_kib();
    let mut raw = Raw::open(gateway.addr).await;
    let headers = lookup_headers(gateway.addr);
    // A header block that never ends: CONTINUATION after CONTINUATION, none with END_HEADERS.
    raw.send(&frame(HEADERS, 0, 1, &headers)).await;
    let filler = literal("x-filler", &"a".repeat(200));
    let mut burst = Vec::new();
    for _ in 0..20_000 {
        burst.extend(frame(CONTINUATION, 0, 1, &filler));
    }
    raw.send(&burst).await;
    served(&gateway).await;
    // h2 stops reading the header block at the configured header list limit (16 KiB).
    let code = raw.cut_off().await;
    assert!(
        [PROTOCOL_ERROR, ENHANCE_YOUR_CALM].contains(&code),
        "GOAWAY {code:#x}"
    );
    served(&gateway).await;
    report("CONTINUATION flood", before);
}

#[tokio::test]
async fn ping_and_settings_floods_keep_memory_bounded_and_others_are_served() {
    let gateway = gateway().await;
    served(&gateway).await;
    let before = rss_kib();
    let mut raw = Raw::open(gateway.addr).await;
    let mut burst = Vec::new();
    for i in 0..100_000u64 {
        burst.extend(frame(PING, 0, 0, &i.to_be_bytes()));
        if i % 10 == 0 {
            burst.extend(frame(SETTINGS, 0, 0, &[]));
        }
    }
    // The server answers each PING and SETTINGS; whether it keeps reading a client that floods
    // it, or cuts it off, it must not queue the answers without bound.
    raw.send(&burst).await;
    served(&gateway).await;
    drop(raw);
    served(&gateway).await;
    report("PING and SETTINGS flood", before);
}

//! Every kind of gRPC client gets served on the CSI socket, whatever HTTP/2
//! `:authority` it sends: grpc-go's `localhost`, the socket path (raw, as
//! grpc-core and older grpc-go send it, or percent-encoded), or nothing.
//!
//! The raw cases use a small HTTP/2 client written here (no client library
//! lets a caller send an authority `http::uri::Authority` refuses); the
//! Python case runs grpcio from the project's virtual environment (see
//! `python()`), which generates its stubs from core/proto/csi.proto.
//! Without grpcio the Python test prints SKIPPED, unless
//! `OMNIDISK_REQUIRE_ALL=1`, where it fails.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::start;
use loona_hpack::Decoder;
use loona_hpack::encoder::encode_integer;
use omnidisk::Mode;
use omnidisk::generated::csi;
use omnidisk_provider_api::testing::FakeSettings;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// What came back on one stream.
#[derive(Debug)]
struct Answer {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    trailers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .chain(&self.trailers)
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The single gRPC message of a unary answer.
    fn message<M: Message + Default>(&self) -> M {
        assert!(self.body.len() >= 5, "no gRPC message in {self:?}");
        assert_eq!(self.body[0], 0, "compressed message");
        let len = u32::from_be_bytes([self.body[1], self.body[2], self.body[3], self.body[4]]);
        assert_eq!(self.body.len(), 5 + len as usize);
        M::decode(&self.body[5..]).expect("decodes")
    }
}

/// A hand-driven HTTP/2 connection: it sends whatever `:authority` it is
/// given, and indexes its headers in the HPACK dynamic table as grpc-core
/// does, so later requests refer to entries of earlier ones.
struct RawClient {
    stream: UnixStream,
    /// This client's HPACK dynamic table, oldest entry first.
    table: Vec<(Vec<u8>, Vec<u8>)>,
    table_size: usize,
    decoder: Decoder<'static>,
    next_stream: u32,
    inbuf: Vec<u8>,
}

impl RawClient {
    async fn connect(socket: &Path) -> Self {
        let mut stream = UnixStream::connect(socket).await.expect("connect");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        stream.write_all(&hello).await.expect("preface");
        Self {
            stream,
            table: Vec::new(),
            table_size: 0,
            decoder: Decoder::new(),
            next_stream: 1,
            inbuf: Vec::new(),
        }
    }

    /// One header block as grpc-core lays it out: `:method` and `:scheme`
    /// from the static table; every other field a literal with incremental
    /// indexing the first time and an index into the dynamic table when the
    /// same field was sent before on this connection.
    fn header_block(&mut self, authority: &[u8], path: &str) -> Vec<u8> {
        // (name, index of the name in the static table or 0, value)
        let fields: [(&[u8], usize, &[u8]); 5] = [
            (b":path", 4, path.as_bytes()),
            (b":authority", 1, authority),
            (b"content-type", 31, b"application/grpc"),
            (b"te", 0, b"trailers"),
            (b"user-agent", 58, b"omnidisk-raw-test/1"),
        ];
        let string = |block: &mut Vec<u8>, bytes: &[u8]| {
            block.extend(encode_integer(bytes.len(), 7));
            block.extend_from_slice(bytes);
        };
        let mut block = vec![0x83, 0x86];
        for (name, static_name, value) in fields {
            let known = self
                .table
                .iter()
                .position(|(n, v)| n.as_slice() == name && v.as_slice() == value);
            if let Some(pos) = known {
                // Dynamic entries follow the 61 static ones, newest first.
                let mut index = encode_integer(62 + self.table.len() - 1 - pos, 7);
                index[0] |= 0x80;
                block.extend(index);
                continue;
            }
            let mut first = encode_integer(static_name, 6);
            first[0] |= 0x40;
            block.extend(first);
            if static_name == 0 {
                string(&mut block, name);
            }
            string(&mut block, value);
            self.table.push((name.to_vec(), value.to_vec()));
            self.table_size += name.len() + value.len() + 32;
            // Keeps this client free of evictions.
            assert!(self.table_size <= 4096, "test client table full");
        }
        block
    }

    /// Sends a unary call and reads until its stream ends. Err holds the
    /// reason the server gave instead of an answer.
    async fn call(
        &mut self,
        authority: &[u8],
        path: &str,
        request: &[u8],
    ) -> Result<Answer, String> {
        let id = self.next_stream;
        self.next_stream += 2;
        let block = self.header_block(authority, path);
        let mut message = vec![0u8];
        message.extend_from_slice(&(request.len() as u32).to_be_bytes());
        message.extend_from_slice(request);
        let mut out = frame(HEADERS, END_HEADERS, id, &block);
        out.extend(frame(DATA, END_STREAM, id, &message));
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Answer {
            headers: Vec::new(),
            trailers: Vec::new(),
            body: Vec::new(),
        };
        let mut block: Vec<u8> = Vec::new();
        loop {
            let (ty, flags, stream, payload) = self.read_frame().await?;
            match ty {
                SETTINGS if flags & ACK == 0 => {
                    let ack = frame(SETTINGS, ACK, 0, &[]);
                    self.stream
                        .write_all(&ack)
                        .await
                        .map_err(|e| format!("write: {e}"))?;
                }
                GOAWAY => return Err(format!("GOAWAY {payload:?}")),
                RST_STREAM if stream == id => {
                    return Err(format!("RST_STREAM with error code {payload:?}"));
                }
                HEADERS | CONTINUATION if stream == id => {
                    block.extend_from_slice(&payload);
                    if flags & END_HEADERS != 0 {
                        let fields = self
                            .decoder
                            .decode(&block)
                            .map_err(|e| format!("server HPACK: {e}"))?;
                        block.clear();
                        if answer.headers.is_empty() {
                            answer.headers = fields;
                        } else {
                            answer.trailers = fields;
                        }
                    }
                }
                DATA if stream == id => answer.body.extend_from_slice(&payload),
                _ => {}
            }
            if stream == id && flags & END_STREAM != 0 && matches!(ty, DATA | HEADERS) {
                return Ok(answer);
            }
        }
    }

    async fn read_frame(&mut self) -> Result<(u8, u8, u32, Vec<u8>), String> {
        loop {
            if self.inbuf.len() >= 9 {
                let len = usize::from(self.inbuf[0]) << 16
                    | usize::from(self.inbuf[1]) << 8
                    | usize::from(self.inbuf[2]);
                if self.inbuf.len() >= 9 + len {
                    let ty = self.inbuf[3];
                    let flags = self.inbuf[4];
                    let stream = u32::from_be_bytes([
                        self.inbuf[5],
                        self.inbuf[6],
                        self.inbuf[7],
                        self.inbuf[8],
                    ]) & 0x7fff_ffff;
                    let payload = self.inbuf[9..9 + len].to_vec();
                    self.inbuf.drain(..9 + len);
                    return Ok((ty, flags, stream, payload));
                }
            }
            let mut buf = [0u8; 16 * 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf))
                .await
                .map_err(|_| "no answer in 10 s".to_string())?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.inbuf.extend_from_slice(&buf[..n]);
        }
    }
}

fn percent_encode(path: &Path) -> String {
    path.to_string_lossy()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn one_fake() -> Vec<(&'static str, FakeSettings)> {
    vec![("alpha", FakeSettings::default())]
}

/// grpc-go's way: a tonic client whose endpoint authority is `localhost`.
#[tokio::test]
async fn localhost_authority_through_tonic() {
    let h = start(Mode::All, &one_fake()).await;
    let path = h.socket.clone();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap();
    let mut identity = csi::identity_client::IdentityClient::new(channel);
    let info = identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, omnidisk::DRIVER_NAME);
    h.stop().await;
}

/// Every authority a real client sends gets Probe and GetPluginInfo
/// answered, each on its own connection and several on one.
#[tokio::test]
async fn raw_authorities_are_all_served() {
    let h = start(Mode::All, &one_fake()).await;
    let raw_path = h.socket.to_string_lossy().into_owned();
    let encoded = percent_encode(&h.socket);
    assert!(encoded.contains("%2F"));
    let authorities: [&[u8]; 5] = [
        b"localhost",
        raw_path.as_bytes(),
        encoded.as_bytes(),
        b"",
        b"unix:///var/lib/kubelet/plugins/omnidisk.csi.dev/csi.sock",
    ];
    let mut shared = RawClient::connect(&h.socket).await;
    for authority in authorities {
        let shown = String::from_utf8_lossy(authority).into_owned();
        let mut own = RawClient::connect(&h.socket).await;
        for client in [&mut own, &mut shared] {
            // Twice each: the second request's header block refers to the
            // client's dynamic table.
            for _ in 0..2 {
                let probe = client
                    .call(authority, "/csi.v1.Identity/Probe", &[])
                    .await
                    .unwrap_or_else(|e| panic!("Probe with authority {shown:?}: {e}"));
                assert_eq!(probe.header(":status").as_deref(), Some("200"), "{shown:?}");
                assert_eq!(
                    probe.header("grpc-status").as_deref(),
                    Some("0"),
                    "{shown:?}: {probe:?}"
                );
                let ready: csi::ProbeResponse = probe.message();
                assert_eq!(ready.ready, Some(true), "{shown:?}");
                let info = client
                    .call(authority, "/csi.v1.Identity/GetPluginInfo", &[])
                    .await
                    .unwrap_or_else(|e| panic!("GetPluginInfo with authority {shown:?}: {e}"));
                let info: csi::GetPluginInfoResponse = info.message();
                assert_eq!(info.name, omnidisk::DRIVER_NAME, "{shown:?}");
            }
        }
    }
    // The second request on a connection was really sent as indexes.
    let mut probe = RawClient::connect(&h.socket).await;
    let first = probe.header_block(raw_path.as_bytes(), "/csi.v1.Identity/Probe");
    let second = probe.header_block(raw_path.as_bytes(), "/csi.v1.Identity/Probe");
    assert_eq!(second.len(), 7, "{second:?} after {first:?}");
    // Graceful shutdown waits for open connections: close ours first.
    drop((shared, probe));
    h.stop().await;
}

/// Reads until the server closes the connection; Err when it stays open.
async fn closed_by_server(stream: &mut UnixStream) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return Err("still open after 10 s".into()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Broken framing and oversized header blocks close that connection; the
/// server keeps serving others.
#[tokio::test]
async fn malformed_clients_are_disconnected() {
    let h = start(Mode::All, &one_fake()).await;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "stray CONTINUATION",
            frame(CONTINUATION, END_HEADERS, 1, &[0x82]),
        ),
        (
            "garbage HPACK",
            frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0x7f]),
        ),
        (
            "DATA inside a header block",
            [frame(HEADERS, 0, 1, &[0x83]), frame(DATA, 0, 1, b"x")].concat(),
        ),
    ];
    let mut endless = frame(HEADERS, 0, 1, &[0x83, 0x86]);
    for _ in 0..5 {
        endless.extend(frame(CONTINUATION, 0, 1, &vec![0x83; 16_384]));
    }
    cases.push(("a 80 KiB header block", endless));
    for (what, bytes) in cases {
        let mut stream = UnixStream::connect(&h.socket).await.unwrap();
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out.extend(bytes);
        // The server may close before taking everything.
        let _ = stream.write_all(&out).await;
        closed_by_server(&mut stream)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let mut client = RawClient::connect(&h.socket).await;
    let probe = client
        .call(b"/after/the/bad/ones", "/csi.v1.Identity/Probe", &[])
        .await
        .unwrap();
    assert_eq!(probe.header("grpc-status").as_deref(), Some("0"));
    drop(client);
    h.stop().await;
}

/// Probe round trips through the server, one connection, sequential calls.
/// Prints the rate (for comparing builds; nothing is asserted on time).
#[tokio::test]
async fn probe_loop_rate() {
    const CALLS: u32 = 2_000;
    let h = start(Mode::All, &one_fake()).await;
    let mut identity = h.client.identity.clone();
    let started = Instant::now();
    for _ in 0..CALLS {
        let probe = identity
            .probe(csi::ProbeRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(probe.ready, Some(true));
    }
    let elapsed = started.elapsed();
    println!(
        "{CALLS} Probe calls in {elapsed:?}: {:.1} µs per call",
        elapsed.as_secs_f64() * 1e6 / f64::from(CALLS)
    );
    h.stop().await;
}

// ---- Python grpcio --------------------------------------------------------

const DEFAULT_VENV: &str = "/var/cache/omnidisk/venv";

/// The interpreter: `$OMNIDISK_PYTHON`, else the project's virtual
/// environment (`$OMNIDISK_VENV`, default /var/cache/omnidisk/venv), else
/// `python3`.
fn python() -> OsString {
    if let Some(python) = std::env::var_os("OMNIDISK_PYTHON").filter(|p| !p.is_empty()) {
        return python;
    }
    let venv = std::env::var_os("OMNIDISK_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV));
    let venv_python = venv.join("bin").join("python");
    if venv_python.exists() {
        return venv_python.into_os_string();
    }
    OsString::from("python3")
}

fn manifest_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// grpcio over `unix:<path>`: its default authority, plus the raw and the
/// percent-encoded socket path set explicitly; GetPluginInfo, Probe,
/// NodeGetInfo and CreateVolume each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client() {
    let python = python();
    let check = tokio::process::Command::new(&python)
        .args(["-c", "import grpc, grpc_tools.protoc"])
        .output()
        .await;
    let missing = match &check {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).into_owned()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = missing {
        let python = python.to_string_lossy();
        if std::env::var("OMNIDISK_REQUIRE_ALL").as_deref() == Ok("1") {
            panic!("OMNIDISK_REQUIRE_ALL=1 but {python} cannot import grpcio/grpcio-tools: {why}");
        }
        println!(
            "SKIPPED: {python} lacks grpcio/grpcio-tools (run scripts/install-test-deps; \
             OMNIDISK_REQUIRE_ALL=1 makes this a failure): {why}"
        );
        return;
    }

    let h = start(Mode::All, &one_fake()).await;
    let stubs = tempfile::tempdir().unwrap();
    let raw = h.socket.to_string_lossy().into_owned();
    let encoded = percent_encode(&h.socket);
    let run = tokio::process::Command::new(&python)
        .arg(manifest_path("tests/python/csi_client.py"))
        .arg("--proto")
        .arg(manifest_path("proto/csi.proto"))
        .arg("--stubs")
        .arg(stubs.path())
        .arg("--socket")
        .arg(&h.socket)
        .args([
            "--authority",
            "",
            "--authority",
            &raw,
            "--authority",
            &encoded,
        ])
        .args(["--volume-type", "alpha"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the Python client finished within 180 s")
        .expect("the Python client ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "csi_client.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("csi_client.py printed no JSON ({e}):\n{stdout}\n{stderr}"));
    println!("grpcio {}", report["grpc_version"]);
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3, "{report}");

    let mut c = h.client.clone();
    let node = c
        .node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    for (run, sent) in runs.iter().zip(["(grpcio's default)", &raw, &encoded]) {
        assert_eq!(
            run["error"],
            serde_json::Value::Null,
            "authority {sent}: {run}"
        );
        assert_eq!(run["plugin_name"], omnidisk::DRIVER_NAME, "{sent}: {run}");
        assert_eq!(run["vendor_version"], omnidisk::VERSION, "{sent}: {run}");
        assert_eq!(run["ready"], true, "{sent}: {run}");
        assert_eq!(run["node_id"], node.node_id.as_str(), "{sent}: {run}");
        assert_eq!(run["capacity_bytes"], 1i64 << 30, "{sent}: {run}");
        let volume_id = run["volume_id"].as_str().expect("volume_id");
        assert!(volume_id.starts_with("v1.alpha."), "{sent}: {run}");
        // The volume exists: creating it again with the same name from the
        // Rust client returns the same ID.
        let again = c
            .controller
            .create_volume(csi::CreateVolumeRequest {
                name: run["volume_name"].as_str().expect("volume_name").into(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 1 << 30,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![common::mount_cap()],
                parameters: [("type".to_string(), "alpha".to_string())].into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.volume.unwrap().volume_id, volume_id, "{sent}");
    }
    h.stop().await;
}
